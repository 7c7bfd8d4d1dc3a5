"""steps.jsonl: every optimiser step's loss terms, learning rate and training time so far."""

from __future__ import annotations

import errno
import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cmift.runs.files import disk_full


class StepLog:
    """Per-step loss terms, kept on the device and written as JSON lines at log intervals, so
    the hot loop never waits for the device."""

    def __init__(self, path: Optional[Path], sink=None):
        self.path, self.sink = path, sink  # sink(rows): the run's logger (logger=...)
        self.pending: list[tuple[int, int, dict, float, float]] = []

    def add(self, step: int, epoch: int, terms: dict[str, torch.Tensor], lr: float,
            seconds: float) -> None:
        """`seconds`: training time so far (host clock; on a GPU, when the step was queued)."""
        self.pending.append((step, epoch, {k: v.detach() for k, v in terms.items()}, lr,
                             round(seconds, 4)))

    def flush(self) -> dict[str, float]:
        """Write pending steps; return the mean of each term over them."""
        if not self.pending:
            return {}
        names = list(self.pending[0][2])
        values = torch.stack([torch.stack([t[k].float() for k in names])
                              for _, _, t, _, _ in self.pending]).cpu().tolist()
        rows = [{"step": step, "epoch": epoch, "lr": lr, "seconds": seconds,
                 **dict(zip(names, row))}
                for (step, epoch, _, lr, seconds), row in zip(self.pending, values)]
        try:
            if self.path is not None:  # None: a data-parallel rank other than 0
                with open(self.path, "a") as f:
                    f.writelines(json.dumps(row) + "\n" for row in rows)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            raise disk_full(self.path, 0) from None
        means = dict(zip(names, np.mean(values, axis=0).tolist()))
        self.pending.clear()
        if self.sink is not None:
            self.sink(rows)
        return means

    def truncate_after(self, step: int) -> None:
        """Drop logged steps after `step` (a resumed run logs them again)."""
        if self.path is None or not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(f"{line}\n" for line in kept))
