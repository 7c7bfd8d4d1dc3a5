"""`min_cmi`, `cmic` and `max_cmi`: cross-entropy plus conditional-mutual-information terms.

  min_cmi / cmic:  CE + lam * CMI_B - beta * Gamma_B      (arXiv 2502.11258, 2309.09123)
  max_cmi:         CE - lam * CMI_B - beta * Gamma_B      (MCMI, arXiv 2401.08732)

CMI_B = mean_i KL(r_i || Q_{y_i}) and Gamma_B the mean separation from the other classes'
centroids (cmi_terms.py), with r_i chosen by `objective.cmi.space` and Q the class centroids
(centroids.py). A term whose weight is 0 is logged but never enters the loss.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager, nullcontext
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
from cmift.lazy import torch
from cmift.objectives import Objective, Outputs, Passes, implements
from cmift.objectives.ce import data_loss
from cmift.objectives.centroids import Centroids
from cmift.objectives.cmi_terms import FeatureMap, batch_cmi, batch_gamma


class CMISpace(str, Enum):
    feature = "feature"  # a distribution over the (normalised) vector the classifier head reads
    output = "output"  # the model's predicted class distribution


class FeatureMapping(str, Enum):
    softmax = "softmax"
    sigmax = "sigmax"  # sigmoid(x) / sum(sigmoid(x)): the released NCMI code's map


class FeatureNorm(str, Enum):
    standardize = "standardize"  # (h - mean(h)) / std(h) over each example's d dimensions
    l2_center = "l2_center"  # L2-normalise h - mu, mu a running mean of the batch-mean feature
    none = "none"


class GammaForm(str, Enum):
    kl = "kl"  # (1/C) sum_{c != y} KL(Q_c || r): the released NCMI code
    cross_entropy = "cross_entropy"  # (1/(C-1)) sum_{c != y} CE(r, Q_c): also maximises H(r)


class CentroidUpdate(str, Enum):
    ema = "ema"  # after each optimiser step, from the batch's classes
    epoch = "epoch"  # a full no-grad pass at the start of every epoch
    fixed = "fixed"  # computed once at init


class CentroidMode(str, Enum):
    eval = "eval"  # the no-grad passes run without dropout
    train = "train"  # with dropout, drawn from the passes' own random stream (MCMI's code)


@register_knobs("objective.cmi")
@dataclass
class CMIKnobs:
    """`objective.cmi.*`: the CMI terms' weights and how they look at the model (METHOD.md)."""

    lam: float = knob(0.1, at_least(0))  # weight of the CMI term
    beta: float = knob(0.0, at_least(0))  # weight of the separation term Gamma (CMIC-DL)
    gamma_form: GammaForm = knob(GammaForm.kl, legacy=GammaForm.cross_entropy)
    space: CMISpace = CMISpace.feature
    feature_map: FeatureMapping = knob(FeatureMapping.softmax, legacy=FeatureMapping.softmax)
    feature_temperature: float = knob(1.0, greater(0))
    feature_norm: FeatureNorm = FeatureNorm.standardize
    # l2_center's running mean of the features
    center_momentum: float = knob(0.9999, between(0, 1, hi_open=True), legacy=0.9999)
    centroid_update: CentroidUpdate = CentroidUpdate.ema
    centroid_mode: CentroidMode = knob(CentroidMode.eval, legacy=CentroidMode.eval)
    momentum: float = knob(0.99, between(0, 1, hi_open=True))
    # examples in the init pass, a sample drawn with the run's seed (its own generator); null =
    # the whole train set (the papers' pass; the studies under conf/experiment/ keep it). 128:
    # the pass costs a few seconds instead of a third of an epoch's steps (docs/PERFORMANCE.md),
    # and the EMA moves the centroids from the first step on
    init_samples: Optional[int] = knob(128, optional(POSITIVE_INT, "the whole train set"))


# version 2: log r from log_softmax, not log(clamp(softmax)) (the gradient under the clamp)
_CMI = dict(reads=("objective.cmi",), tuned=("objective.cmi.lam", "objective.cmi.beta"),
            regression=False, version=2)
register(
    MethodSpec("objective", "min_cmi", "CE + lam CMI - beta Gamma (feature space)", **_CMI),
    MethodSpec("objective", "cmic", "min_cmi with CMIC-DL's separation term, output space",
               **_CMI),
    MethodSpec("objective", "max_cmi", "CE - lam CMI: the MCMI teacher", can_teach=True, **_CMI),
)


@contextmanager
def own_random_stream(seed: int):
    """Dropout inside draws from a stream seeded by `seed`; the run's streams are restored
    after, so train-mode centroid passes never shift the training's dropout masks."""
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


class CentroidPasses:
    """The no-grad passes that fit class centroids, in eval or train mode (`centroid_mode`);
    train-mode passes are numbered, each with its own seeded dropout stream."""

    def __init__(self, c, seed: int):
        self.train_mode = choice(c.centroid_mode) == "train"
        self.seed, self.done = seed, 0

    def fit(self, centroids_for, log_r, passes: Passes, limit) -> None:
        """Fit the centroids made by `centroids_for(K, device)` to the class means of
        exp(log_r(outputs)) over `limit` training examples (a seeded sample; streamed)."""
        stream = own_random_stream(self.seed * 1_000_003 + self.done)
        with stream if self.train_mode else nullcontext():
            pairs = ((log_r(out).exp(), y) for out, y in passes(limit, self.train_mode))
            first = next(pairs)
            centroids = centroids_for(first[0].shape[-1], first[0].device)
            centroids.fit(itertools.chain([first], pairs))
        self.done += 1

class CMIObjective(Objective):
    sign = 1.0  # +1: minimise CMI; -1: maximise it

    def __init__(self, cfg, task, **_):
        c = cfg.objective.cmi
        self.lam, self.beta = float(c.lam), float(c.beta)
        self.gamma_form = choice(c.gamma_form)
        self.features = FeatureMap(c)
        self.needs_features = self.features.needs_features
        self.update = choice(c.centroid_update)
        self.momentum, self.init_samples = float(c.momentum), c.init_samples
        self.n_classes = task.num_labels
        self.passes = CentroidPasses(c, cfg.seed)
        self.centroids: Centroids | None = None
        self._since_step: list[tuple] = []  # (r, y) of this step's batches, for the EMA

    def _fit(self, passes: Passes, limit) -> None:
        def centroids_for(dim: int, device):
            if self.centroids is None:  # K is known once the model has produced an r
                self.centroids = Centroids(self.n_classes, dim, self.momentum, device=device)
            return self.centroids

        self.passes.fit(centroids_for, self.features.log_r, passes, limit)

    def setup(self, passes: Passes) -> None:
        self._fit(passes, self.init_samples)

    def on_epoch_start(self, epoch: int, passes: Passes) -> None:
        if self.update == "epoch" and epoch > 1:  # epoch 1 starts from the init pass
            self._fit(passes, None)

    def __call__(self, out: Outputs, batch: dict) -> dict:
        y = batch["labels"]
        ce = data_loss(out, y, regression=False)
        log_r = self.features.log_r(out, training=True)
        q = self.centroids.q
        cmi, gamma = batch_cmi(log_r, y, q), batch_gamma(log_r, y, q, self.gamma_form)
        if self.update == "ema":
            self._since_step.append((log_r.detach().exp(), y))
        loss = ce
        if self.lam:  # a zero weight keeps its term out: 0 * NaN would still be NaN
            loss = loss + self.sign * self.lam * cmi
        if self.beta:
            loss = loss - self.beta * gamma
        return {"ce": ce, "cmi": cmi, "gamma": gamma, "loss": loss}

    def after_step(self) -> None:
        self.features.commit()
        if self._since_step:
            r, y = (torch.cat(t) for t in zip(*self._since_step))
            self.centroids.ema(r, y)
            self._since_step.clear()

    def discard_step(self) -> None:
        self.features.discard()
        self._since_step.clear()

    def state_dict(self) -> dict:
        state = {"features": self.features.state_dict(), "passes_done": self.passes.done}
        if self.centroids is not None:
            state["centroids"] = self.centroids.state_dict()
        return state

    def to(self, device) -> None:
        self.features.to(device)
        if self.centroids is not None:
            self.centroids.to(device)

    def load_state_dict(self, state: dict) -> None:
        self.features.load_state_dict(state.get("features", {}))
        self.passes.done = state.get("passes_done", 0)
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
