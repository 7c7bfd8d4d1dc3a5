"""The CMI terms (METHOD.md "The terms"), per example and per batch, and the map from a model's
outputs to the distribution r they look at (`objective.cmi.space`, `.feature_map`,
`.feature_norm`).

Every term takes log r, which comes from log_softmax (or its sigmax analogue), never from
log(clamp(softmax)): a clamp zeroes the gradient of every coordinate under the clamp, which
breaks the KL form of Gamma. Centroid probabilities Q are clamped before their log.
"""

from __future__ import annotations

from typing import Optional

from cmift.lazy import F, torch
from cmift.objectives.divergence import log_clamped


# ----- r: the distribution the terms look at ------------------------------------------------
def log_sigmax(x):
    """log of sigmax(x) = sigmoid(x) / sum_k sigmoid(x_k) (the released NCMI code's map),
    computed stably as logsigmoid(x) - logsumexp(logsigmoid(x))."""
    log_s = F.logsigmoid(x)
    return log_s - torch.logsumexp(log_s, dim=-1, keepdim=True)


class FeatureMap:
    """log r_i from the model's outputs, by `objective.cmi.*`:
    - space output: log_softmax(logits);
    - space feature: map(norm(h) / tau) over the d dimensions of the head's feature vector h,
      map = softmax or sigmax, norm = standardize (per example), l2_center (L2-normalise h - mu,
      mu a detached running mean of the batch-mean feature, started from the first batch) or
      none.
    The running mean is state: a training batch stages its update, `commit` keeps it after the
    optimiser step and `discard` drops it (a skipped step leaves no trace)."""

    def __init__(self, c):
        from cmift.config.spec import choice

        self.space, self.norm = choice(c.space), choice(c.feature_norm)
        self.map, self.temperature = choice(c.feature_map), float(c.feature_temperature)
        self.center_momentum = float(c.center_momentum)
        self.center: Optional[object] = None  # mu, (d,)
        self.pending: Optional[object] = None  # mu after this step's micro-batches

    @property
    def needs_features(self) -> bool:
        return self.space == "feature"

    def log_r(self, out, training: bool = False):
        if self.space == "output":
            return torch.log_softmax(out.logits.float(), dim=-1)
        x = self._normalise(out.features.float(), training) / self.temperature
        return torch.log_softmax(x, dim=-1) if self.map == "softmax" else log_sigmax(x)

    def _normalise(self, h, training: bool):
        if self.norm == "standardize":  # makes the temperature mean the same for every backbone
            return (h - h.mean(-1, keepdim=True)) / (h.std(-1, unbiased=False, keepdim=True)
                                                     + 1e-6)
        if self.norm == "l2_center":
            return F.normalize(h - self._mean(h, training), dim=-1)
        return h

    def _mean(self, h, training: bool):
        batch_mean = h.detach().mean(0)
        mu = self.pending if self.pending is not None else self.center
        if mu is None:  # the first batch seen starts the running mean
            mu = batch_mean
            if not training:
                self.center = mu
        elif training:
            m = self.center_momentum
            mu = m * mu + (1 - m) * batch_mean
        if training:
            self.pending = mu
        return mu

    def commit(self) -> None:
        if self.pending is not None:
            if bool(torch.isfinite(self.pending).all()):
                self.center = self.pending
            self.pending = None

    def discard(self) -> None:
        self.pending = None

    def state_dict(self) -> dict:
        return {} if self.center is None else {"center": self.center.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        self.center = state.get("center")

    def to(self, device) -> None:
        if self.center is not None:
            self.center = self.center.to(device)


# ----- the terms -------------------------------------------------------------------------------
def cmi_rows(log_r, y, q):
    """KL(r_i || Q_{y_i}) for every example i."""
    return (log_r.exp() * (log_r - log_clamped(q)[y])).sum(-1)


def gamma_rows(log_r, y, q, form: str):
    """Gamma_i, the separation of example i from the other classes' centroids:
    kl:            (1/C) sum_{c != y_i} KL(Q_c || r_i)                (the released NCMI code)
    cross_entropy: (1/(C-1)) sum_{c != y_i} -sum_k r_i(k) ln Q_c(k)"""
    n_classes = q.shape[0]
    log_q = log_clamped(q)
    others = 1.0 - F.one_hot(y, n_classes).to(log_r.dtype)
    if form == "kl":
        kl = (q * log_q).sum(-1)[None, :] - log_r @ q.T  # (B, C): KL(Q_c || r_i)
        return (kl * others).sum(-1) / n_classes
    cross = -(log_r.exp() @ log_q.T)  # (B, C): cross entropy of r_i against every centroid
    return (cross * others).sum(-1) / (n_classes - 1)


def batch_cmi(log_r, y, q):
    """CMI_B = (1/B) sum_i KL(r_i || Q_{y_i})."""
    return cmi_rows(log_r, y, q).mean()


def batch_gamma(log_r, y, q, form: str = "kl"):
    """Gamma_B = (1/B) sum_i Gamma_i."""
    return gamma_rows(log_r, y, q, form).mean()
