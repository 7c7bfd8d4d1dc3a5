"""`ce`: cross-entropy (MSE for regression tasks such as STS-B), the baseline."""

from __future__ import annotations

from cmift.config.spec import MethodSpec, register
from cmift.lazy import F
from cmift.objectives import Objective, Outputs, implements

register(MethodSpec("objective", "ce", "cross-entropy (MSE on regression): the baseline",
                    can_teach=True))


def task_loss(logits, labels, regression: bool):
    """The supervised loss every objective starts from, in fp32 even under autocast."""
    logits = logits.float()
    if regression:
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels)


def data_loss(out: Outputs, labels, regression: bool):
    """The supervised term of every objective: task_loss, or label-token tuning's pair loss."""
    if out.pair_loss:
        from cmift.tuning.label_tuning import pair_loss

        return pair_loss(out.logits, labels)
    return task_loss(out.logits, labels, regression)


@implements("ce")
class CrossEntropy(Objective):
    def __init__(self, cfg, task, **_):
        self.regression = task.is_regression

    def __call__(self, out: Outputs, batch: dict) -> dict:
        ce = data_loss(out, batch["labels"], self.regression)
        return {"ce": ce, "loss": ce}
