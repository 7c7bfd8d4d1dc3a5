"""Dropout methods (`dropout=`): how the model's dropout modules are set before training.

A method group that composes with every objective: `cmift task=rte dropout=guided`,
`cmift task=mrpc objective=min_cmi dropout=guided`. Each file declares its spec and knobs
(torch-free, cmift/config/spec.py) and implements `apply(model, context) -> dict`, whose result
(the rates it set, and how it found them) goes into the run's metrics.json under
`dropout_setup`.
In a distillation run the method applies to the student; the teacher trains with standard
dropout, so the students of a sweep share their teacher. docs/DROPOUT.md has the formulas.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cmift.config.spec import discover, implementations

IMPLEMENTATIONS: dict[str, Any] = {}


@dataclass
class DropoutContext:
    """What a dropout method may read besides the model (guided dropout's Fisher needs it)."""

    cfg: Any  # the run's config
    model_cfg: Any  # the backbone trained (the student's in a distillation run)
    task: Any
    train: Any  # the training Split
    tokenizer: Any
    device: Any  # torch.device


# function decorator: `apply(model, context) -> dict` of the dropout methods `names`
implements = implementations(IMPLEMENTATIONS)


def apply_dropout(model, context: DropoutContext) -> dict:
    """Set `model`'s dropout as `cfg.dropout` says; what was set, for the run record."""
    from cmift.dropout.masks import draw_masks

    discover()
    name = context.cfg.dropout.name
    setup = {"method": name, **IMPLEMENTATIONS[name](model, context)}
    return {**setup, **draw_masks(model, context.cfg.train.dropout_masks)}


def rates(model) -> dict[str, float]:
    """name -> p of every dropout module of `model` (the head's included)."""
    from cmift.dropout.sites import dropout_modules

    return {name: float(m.p) for name, m in dropout_modules(model).items()}
