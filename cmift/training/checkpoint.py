"""Checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint holds the model, optimiser, scheduler and grad-scaler states, every random
stream (Python, NumPy, torch CPU and CUDA, and the data-order generator), the objective's state
(CMI centroids), the position in the data (epoch, batch, step) and the evaluations so far. Only
plain types and tensors are stored, so loading uses `torch.load(weights_only=True)`; files are
written atomically, and only the last `keep` are kept.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cmift.runs.files import CKPT_DIR, atomic_write

log = logging.getLogger(__name__)


def rng_state() -> dict:
    version, state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    return {
        "python": [version, list(state), gauss],
        "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss,
                  np_gauss],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    version, values, gauss = state["python"]
    random.setstate((version, tuple(values), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir: Path, step: int, payload: dict, keep: int) -> Path:
    folder = run_dir / CKPT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"step-{step:08d}.pt"
    atomic_write(path, lambda f: torch.save(payload, f), binary=True)
    for old in sorted(folder.glob("step-*.pt"))[:-keep]:
        old.unlink(missing_ok=True)
    return path


def latest(run_dir: Path) -> Optional[dict]:
    """The newest readable checkpoint of the run, or None."""
    for path in sorted((run_dir / CKPT_DIR).glob("step-*.pt"), reverse=True):
        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # unreadable: fall back to the one before
            log.warning("checkpoint %s unreadable (%s); trying an older one", path, e)
            continue
        payload["path"] = str(path)
        return payload
    return None


def clear(run_dir: Path) -> None:
    for path in (run_dir / CKPT_DIR).glob("*.pt"):
        path.unlink(missing_ok=True)
