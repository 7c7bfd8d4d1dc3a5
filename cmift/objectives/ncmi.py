"""`ncmi`: NCMI alone as the loss (arXiv 2601.02543, the released code NCMI_gcenter_r.py):

  loss = (1/B) sum_i KL(r_i || Q_{y_i}) / Gamma_i,   no cross-entropy,

gradients through both the CMI and the separation term. The defaults are the released code's:
feature space, sigmax, l2_center, tau 0.2, Gamma in the KL form, fixed anchor centroids
Q_c = sigmax(10 [I_C | 0]_c + 1e-6); prediction by the nearest class mean of r (KL), recomputed
on the training set before every evaluation. The classifier head gets no gradient: `decode=head`
reads it anyway, to show that.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from enum import Enum

from cmift.config.spec import MethodSpec, choice, knob, register, register_knobs
from cmift.objectives import Outputs, Passes, implements
from cmift.objectives.centroids import Centroids
from cmift.objectives.cmi import CMIObjective
from cmift.objectives.cmi_terms import cmi_rows, gamma_rows
from cmift.objectives.divergence import log_clamped


class TrainCentroids(str, Enum):
    anchor = "anchor"  # fixed anchors (the released code)
    ema = "ema"  # class means of an init pass, then an EMA after each step (objective.cmi.momentum)
    epoch = "epoch"  # class means of a full no-grad pass at the start of every epoch


class Decode(str, Enum):
    centroid = "centroid"  # argmin_c KL(r || Qhat_c), Qhat the training set's class means of r
    head = "head"  # the classifier's logits (untrained by this loss)


@register_knobs("objective.ncmi")
@dataclass
class NCMIKnobs:
    train_centroids: TrainCentroids = knob(TrainCentroids.anchor)
    decode: Decode = knob(Decode.centroid)


# What ncmi reads of objective.cmi: how r is made, not the CE objectives' weights.
_R_KNOBS = ("space", "feature_map", "feature_norm", "feature_temperature", "center_momentum",
            "gamma_form", "centroid_mode", "momentum", "init_samples")
register(MethodSpec("objective", "ncmi", "NCMI alone as the loss (mean of CMI_i / Gamma_i)",
                    reads=("objective.ncmi", *(f"objective.cmi.{k}" for k in _R_KNOBS)),
                    regression=False))

_UPDATE = {"anchor": "fixed", "ema": "ema", "epoch": "epoch"}


@implements("ncmi")
class NCMI(CMIObjective):
    def __init__(self, cfg, task, **_):
        super().__init__(cfg, task)
        n = cfg.objective.ncmi
        self.anchored = choice(n.train_centroids) == "anchor"
        self.update = _UPDATE[choice(n.train_centroids)]
        self.decode = choice(n.decode)

    def setup(self, passes: Passes) -> None:
        if not self.anchored:  # anchors are made at the first batch, when K is known
            super().setup(passes)

    def __call__(self, out: Outputs, batch: dict) -> dict:
        y = batch["labels"]
        log_r = self.features.log_r(out, training=True)
        if self.centroids is None:
            self.centroids = Centroids(self.n_classes, log_r.shape[-1], self.momentum,
                                       device=log_r.device)
            self.centroids.anchor()
        q = self.centroids.q
        cmi, gamma = cmi_rows(log_r, y, q), gamma_rows(log_r, y, q, self.gamma_form)
        if self.update == "ema":
            self._since_step.append((log_r.detach().exp(), y))
        return {"cmi": cmi.mean(), "gamma": gamma.mean(), "loss": (cmi / gamma).mean()}

    def decoder(self, passes: Passes):
        """Class scores -KL(r || Qhat_c), Qhat the class means of r over the training set
        (eval mode), or None to read the head."""
        if self.decode == "head":
            return None
        pairs = ((self.features.log_r(out).exp(), y) for out, y in passes(None))
        first = next(pairs)
        means = Centroids(self.n_classes, first[0].shape[-1], 0.0, device=first[0].device)
        means.fit(itertools.chain([first], pairs))
        log_q = log_clamped(means.q)

        def scores(out: Outputs):
            log_r = self.features.log_r(out)
            return -((log_r.exp() * log_r).sum(-1, keepdim=True) - log_r.exp() @ log_q.T)

        return scores
