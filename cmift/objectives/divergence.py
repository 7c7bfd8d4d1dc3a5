"""KL divergence with the clamp METHOD.md prescribes: teacher and centroid probabilities are
clamped at EPS before a log (a zero entry would give -inf); a model's own log-probabilities
come from log_softmax instead."""

from __future__ import annotations

from cmift.lazy import torch

EPS = 1e-8


def log_clamped(p):
    return torch.log(p.clamp_min(EPS))


def kl_rows(p, log_q):
    """KL(p_i || q_i) for every row i, with p clamped before its log."""
    return (p * (log_clamped(p) - log_q)).sum(-1)
