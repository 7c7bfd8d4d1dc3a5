"""`min_cmi`, `cmic` and `max_cmi`: cross-entropy plus conditional-mutual-information terms.

  min_cmi / cmic:  CE + lam * CMI_B - beta * Gamma_B      (arXiv 2502.11258, 2309.09123)
  max_cmi:         CE - lam * CMI_B - beta * Gamma_B      (MCMI, arXiv 2401.08732)

CMI_B = mean_i KL(r_i || Q_{y_i}) and Gamma_B = mean_i mean_{c != y_i} CE(r_i, Q_c), with r_i the
distribution chosen by `objective.cmi.space` and Q the class centroids (centroids.py).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from enum import Enum
from typing import Optional

from cmift.config.spec import (
    POSITIVE_INT,
    MethodSpec,
    at_least,
    between,
    choice,
    greater,
    knob,
    optional,
    register,
    register_knobs,
)
from cmift.lazy import F, torch
from cmift.objectives import Objective, Outputs, Passes, implements
from cmift.objectives.ce import task_loss
from cmift.objectives.centroids import Centroids
from cmift.objectives.divergence import log_clamped


class CMISpace(str, Enum):
    feature = "feature"  # softmax over the (standardised) vector the classifier head reads
    output = "output"  # the model's predicted class distribution


class CentroidUpdate(str, Enum):
    ema = "ema"  # after each optimiser step, from the batch's classes
    epoch = "epoch"  # a full no-grad pass at the start of every epoch
    fixed = "fixed"  # computed once at init


class FeatureNorm(str, Enum):
    standardize = "standardize"  # (h - mean(h)) / std(h) over each example's d dimensions
    none = "none"


@register_knobs("objective.cmi")
@dataclass
class CMIKnobs:
    """`objective.cmi.*`: the CMI terms' weights and how they look at the model (METHOD.md)."""

    lam: float = knob(0.1, at_least(0))  # weight of the CMI term
    beta: float = knob(0.0, at_least(0))  # weight of the separation term Gamma (CMIC-DL)
    space: CMISpace = CMISpace.feature
    feature_temperature: float = knob(1.0, greater(0))
    feature_norm: FeatureNorm = FeatureNorm.standardize
    centroid_update: CentroidUpdate = CentroidUpdate.ema
    momentum: float = knob(0.99, between(0, 1, hi_open=True))
    # examples in the init pass; null = the whole train set
    init_samples: Optional[int] = knob(None, optional(POSITIVE_INT, "the whole train set"))


_CMI = dict(reads=("objective.cmi",), tuned=("objective.cmi.lam", "objective.cmi.beta"),
            regression=False)
register(
    MethodSpec("objective", "min_cmi", "CE + lam CMI - beta Gamma (feature space)", **_CMI),
    MethodSpec("objective", "cmic", "min_cmi with CMIC-DL's separation term, output space",
               **_CMI),
    MethodSpec("objective", "max_cmi", "CE - lam CMI: the MCMI teacher", can_teach=True, **_CMI),
)

def distribution(out: Outputs, space: str, temperature: float, norm: str):
    """r_i: the predicted class distribution, or a softmax over the head's feature vector."""
    if space == "output":
        return torch.softmax(out.logits.float(), dim=-1)
    h = out.features.float()
    if norm == "standardize":  # makes the temperature mean the same for every backbone
        h = (h - h.mean(-1, keepdim=True)) / (h.std(-1, unbiased=False, keepdim=True) + 1e-6)
    return torch.softmax(h / temperature, dim=-1)


def batch_cmi(r, y, q):
    """CMI_B = (1/B) sum_i KL(r_i || Q_{y_i})."""
    return (r * (log_clamped(r) - log_clamped(q)[y])).sum(-1).mean()


def batch_gamma(r, y, q):
    """Gamma_B = (1/B) sum_i 1/(C-1) sum_{c != y_i} -sum_k r_i(k) ln Q_c(k)."""
    n_classes = q.shape[0]
    cross = -(r @ log_clamped(q).T)  # (B, C): cross entropy of r_i against every centroid
    others = 1.0 - F.one_hot(y, n_classes).to(cross.dtype)
    return ((cross * others).sum(-1) / (n_classes - 1)).mean()


class CMIObjective(Objective):
    sign = 1.0  # +1: minimise CMI; -1: maximise it

    def __init__(self, cfg, task, **_):
        c = cfg.objective.cmi
        self.lam, self.beta = float(c.lam), float(c.beta)
        self.space, self.norm = choice(c.space), choice(c.feature_norm)
        self.temperature = float(c.feature_temperature)
        self.update = choice(c.centroid_update)
        self.momentum, self.init_samples = float(c.momentum), c.init_samples
        self.n_classes = task.num_labels
        self.needs_features = self.space == "feature"
        self.centroids: Centroids | None = None
        self._since_step: list[tuple] = []

    def r(self, out: Outputs):
        return distribution(out, self.space, self.temperature, self.norm)

    def _fit(self, passes: Passes, limit) -> None:
        pairs = ((self.r(out), y) for out, y in passes(limit))  # streamed: K x N never held
        first = next(pairs)
        if self.centroids is None:  # K is known once the model has produced an r
            self.centroids = Centroids(self.n_classes, first[0].shape[-1], self.momentum,
                                       device=first[0].device)
        self.centroids.fit(itertools.chain([first], pairs))

    def setup(self, passes: Passes) -> None:
        self._fit(passes, self.init_samples)

    def on_epoch_start(self, epoch: int, passes: Passes) -> None:
        if self.update == "epoch" and epoch > 1:  # epoch 1 starts from the init pass
            self._fit(passes, None)

    def __call__(self, out: Outputs, batch: dict) -> dict:
        y = batch["labels"]
        ce = task_loss(out.logits, y, regression=False)
        r = self.r(out)
        q = self.centroids.q
        cmi, gamma = batch_cmi(r, y, q), batch_gamma(r, y, q)
        if self.update == "ema":
            self._since_step.append((r.detach(), y))
        loss = ce + self.sign * self.lam * cmi - self.beta * gamma
        return {"ce": ce, "cmi": cmi, "gamma": gamma, "loss": loss}

    def after_step(self) -> None:
        if self._since_step:
            r, y = (torch.cat(t) for t in zip(*self._since_step))
            self.centroids.ema(r, y)
            self._since_step.clear()

    def state_dict(self) -> dict:
        return {"centroids": self.centroids.state_dict()} if self.centroids else {}

    def to(self, device) -> None:
        if self.centroids is not None:
            self.centroids.to(device)

    def load_state_dict(self, state: dict) -> None:
        if "centroids" in state:
            q = state["centroids"]["q"]
            self.centroids = Centroids(q.shape[0], q.shape[1], self.momentum)
            self.centroids.load_state_dict(state["centroids"])


@implements("min_cmi", "cmic")
class MinCMI(CMIObjective):
    sign = 1.0


@implements("max_cmi")
class MaxCMI(CMIObjective):
    sign = -1.0
