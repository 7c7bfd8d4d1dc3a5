"""The best evaluation so far: `train.keep_best` (keep its weights) and
`train.early_stopping_patience` (stop when it is this many evaluations old).

Both go by the score the tables choose epochs by (`--epoch best`, metrics.json's `best`): the
selection split's task score when the run has one, else dev's; ties go to the earlier
evaluation. Both are derived from the evaluations list that every checkpoint holds, so a resumed
run knows its best step and its patience without extra state; the best weights are one file
beside the checkpoints, cleared with them when the run finishes.
"""

from __future__ import annotations

from pathlib import Path

from cmift.runs.files import CKPT_DIR, atomic_write
from cmift.runs.scores import best_index
from cmift.tuning import load_trained_state, trained_state

BEST_FILE = "best-weights.pt"


class BestWeights:
    """The weights of the best evaluation, in <run dir>/checkpoints/best-weights.pt."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.path = run_dir / CKPT_DIR / BEST_FILE
        self.enabled = enabled

    def after_eval(self, evals: list[dict], model) -> None:
        import torch

        if not self.enabled or best_index(evals) != len(evals) - 1:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        payload = {"step": evals[-1]["step"], "model": trained_state(model)}
        atomic_write(self.path, lambda f: torch.save(payload, f), binary=True)

    def restore(self, evals: list[dict], model) -> dict:
        """Load the best evaluation's weights into `model`; returns that evaluation."""
        import torch

        best = evals[best_index(evals)]
        payload = torch.load(self.path, map_location="cpu", weights_only=True)
        if payload["step"] != best["step"]:  # a file from a different history: never guess
            raise RuntimeError(f"{self.path} holds step {payload['step']}, but the best "
                               f"evaluation is at step {best['step']}")
        load_trained_state(model, payload["model"])
        return best
