"""The logger interface; itself the `none` logger."""

from __future__ import annotations


class Logger:
    def start(self, step: int) -> None:
        """Training starts at `step` (0, or a resumed checkpoint's step)."""

    def log_steps(self, rows: list[dict]) -> None:
        """Optimiser steps: {"step", "epoch", "lr", "seconds", <loss terms>} each."""

    def log_eval(self, entry: dict) -> None:
        """An evaluation: {"step", "epoch", "dev": {...}, "selection": {...} (optional)}."""

    def finish(self, record: dict) -> None:
        """The run finished ok; `record` is its metrics.json."""

    def close(self) -> None:
        """Release files and processes (also after a failure)."""


def eval_scalars(entry: dict) -> dict[str, float]:
    """An evaluation as flat scalars: dev/accuracy, selection/score, ..."""
    return {f"{split}/{k}": v for split in ("dev", "selection") for k, v in
            (entry.get(split) or {}).items() if isinstance(v, (int, float))}


STEP_KEYS = ("step", "epoch", "seconds")  # the others in a step row are scalars to plot
