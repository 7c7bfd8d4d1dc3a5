"""Which evaluation of a run is its best, by the score the tables choose epochs by
(`--epoch best`, metrics.json's `best`): the selection split's task score when the run has one,
else dev's; ties go to the earlier evaluation. Read by the run record, the training loop
(train.keep_best, early stopping) and Hydra's sweepers (the score a job returns)."""

from __future__ import annotations

import math
from typing import Optional


def score(entry: dict) -> float:
    """An evaluation's score for choosing: selection split when there is one, else dev; NaN
    (a degenerate metric) never counts as best."""
    value = entry.get("selection", entry["dev"])["score"]
    return -math.inf if value is None or math.isnan(value) else value


def best_index(evals: list[dict]) -> int:
    """The position of the best evaluation (the first of equal ones)."""
    scores = [score(e) for e in evals]
    return scores.index(max(scores))


def evaluations_since_best(evals: list[dict]) -> int:
    return len(evals) - 1 - best_index(evals) if evals else 0


def should_stop(evals: list[dict], patience: Optional[int]) -> bool:
    """Early stopping: the best evaluation is `patience` evaluations old."""
    return bool(patience) and evaluations_since_best(evals) >= patience


def run_score(record: dict) -> float:
    """What a job returns to a Hydra sweeper (Optuna maximises it): the task score of the run's
    best evaluation on the selection split (dev when the run has none). A run that did not
    finish returns -inf, the worst score: Hydra's Optuna sweeper stops the whole search on a
    non-number, while a failed run is already recorded and named when the sweep ends."""
    evals = record.get("evals") or []
    if record.get("status") != "ok" or not evals:
        return -math.inf
    return score(evals[best_index(evals)])
