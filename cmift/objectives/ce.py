"""`ce`: cross-entropy (MSE for regression tasks such as STS-B), the baseline."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmift.objectives import Objective, Outputs, register


def task_loss(logits: torch.Tensor, labels: torch.Tensor, regression: bool) -> torch.Tensor:
    """The supervised loss every objective starts from, in fp32 even under autocast."""
    logits = logits.float()
    if regression:
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels)


@register("ce")
class CrossEntropy(Objective):
    def __init__(self, cfg, task, **_):
        self.regression = task.is_regression

    def __call__(self, out: Outputs, batch: dict) -> dict[str, torch.Tensor]:
        ce = task_loss(out.logits, batch["labels"], self.regression)
        return {"ce": ce, "loss": ce}
