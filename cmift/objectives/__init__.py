"""Training objectives: one small file per family, each registering its names here.

An objective maps (model outputs, batch) to a dict of named loss terms in fp32; the loop
optimises terms["loss"] and logs every term. Adding one touches one file here and one YAML
in conf/objective/.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable, Optional

import torch

OBJECTIVES: dict[str, Callable] = {}


@dataclass
class Outputs:
    """What the model produced for a batch: logits, and the feature vector the head reads."""

    logits: torch.Tensor
    features: Optional[torch.Tensor] = None


def register(name: str):
    def add(factory):
        OBJECTIVES[name] = factory
        return factory

    return add


def build(objective_cfg, task):
    """The objective named by `objective.name`, built from its config and the task."""
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")
    return OBJECTIVES[objective_cfg.name](objective_cfg, task)
