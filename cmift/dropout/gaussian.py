"""`dropout=gaussian`: multiplicative Gaussian noise in place of every dropout (the guided-dropout
paper's other baseline, arXiv 2406.14005; Srivastava et al. 2014):

  train mode: x * (1 + sigma * eps), eps ~ N(0, 1), sigma^2 = p / (1 - p);  eval mode: x,

which has the mean and variance of inverted Bernoulli dropout at rate p. Every dropout module
is replaced, the classifier head's included; p is the module's own rate, or `dropout.gaussian.p`
when set. Attention probabilities are dropped inside the attention function, not by a module,
so the model runs a registered attention function (`cmift_gaussian`, eager attention maths) that
applies the same noise to them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional

from cmift.config.spec import MethodSpec, between, knob, optional, register, register_knobs
from cmift.dropout import implements, rates
from cmift.dropout.attention import eager_attention, register_attention, use_attention
from cmift.lazy import torch

ATTENTION = "cmift_gaussian"


@register_knobs("dropout.gaussian")
@dataclass
class GaussianKnobs:
    p: Optional[float] = knob(None, optional(between(0, 1, hi_open=True), "each module's own"))


register(MethodSpec("dropout", "gaussian", "multiplicative Gaussian noise N(1, p/(1-p)) in place "
                    "of every dropout", reads=("dropout.gaussian",)))


def gaussian_noise(x, p: float, training: bool):
    """x times 1 + sqrt(p / (1 - p)) N(0, 1), in train mode when p > 0; else x."""
    if not training or p <= 0:
        return x
    return x * (1 + math.sqrt(p / (1 - p)) * torch.randn_like(x))


@lru_cache(maxsize=None)
def gaussian_dropout_class() -> type:
    """The module class, made on first use (this file is imported on the torch-free config
    path). A Dropout subclass: code that reads `.p` (the attention layers) still finds it."""

    class GaussianDropout(torch.nn.Dropout):
        def forward(self, x):
            return gaussian_noise(x, self.p, self.training)

    return GaussianDropout


def gaussian_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0,
                       **kwargs):
    """Eager scaled dot-product attention, with Gaussian noise on the attention probabilities
    (`dropout` is the rate the layer passes: its dropout module's p in train mode, else 0)."""
    return eager_attention(query, key, value, attention_mask, scaling,
                           lambda probs: gaussian_noise(probs, dropout, module.training))


@implements("gaussian")
def noise(model, context) -> dict:
    from cmift.dropout.sites import dropout_modules

    rate = context.cfg.dropout.gaussian.p
    cls = gaussian_dropout_class()
    for name, module in dropout_modules(model).items():
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        replacement = cls(module.p if rate is None else rate)
        setattr(parent, leaf, replacement.train(module.training))
    register_attention(ATTENTION, gaussian_attention, "eager")
    return {"rates": rates(model), "attention": use_attention(model, ATTENTION)}
