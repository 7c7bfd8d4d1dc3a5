"""`train.dropout_masks`: how Bernoulli dropout draws its masks (standard and guided dropout;
a distillation teacher trains with the student's choice).

  bernoulli (default): torch's own dropout, masks from bernoulli_; every run before the knob.
  uniform: keep an element where u >= p, u ~ U[0, 1) from torch.rand (float32), and scale the
           kept ones by 1 / (1 - p), as torch's dropout does (the mask divided by 1 - p in the
           input's dtype, then multiplied in).

Both keep each element independently with probability 1 - p (uniform: to float32's 2^-24
resolution); they differ only in the random stream, so a run's identity names the choice. Why:
torch's CPU bernoulli_ is vectorised only on Intel CPUs (MKL); elsewhere it draws one element at
a time, and dropout masks become a large share of a bf16 training step (docs/PERFORMANCE.md,
the CPU's limit); torch.rand is several times faster there. Every torch Dropout module is
replaced (the classifier head's included, keeping its p), and the attention probabilities are
dropped the same way by a registered attention function (`cmift_uniform_masks`): eager
attention maths in train mode, transformers' SDPA function when nothing is dropped (evaluation),
so evaluation computes exactly what it computes with bernoulli masks.
"""

from __future__ import annotations

from functools import lru_cache

from cmift.config.spec import choice
from cmift.dropout.attention import eager_attention, register_attention, use_attention
from cmift.lazy import torch

ATTENTION = "cmift_uniform_masks"


def uniform_dropout(x, p: float, training: bool):
    """Inverted dropout at rate p with a mask drawn by torch.rand; x itself when not training
    or p = 0."""
    if not training or p <= 0:
        return x
    if p >= 1:
        return x * 0  # as torch: no 0 / 0 scale
    keep = torch.rand(x.shape, device=x.device) >= p
    return x * keep.to(x.dtype).div_(1 - p)


@lru_cache(maxsize=None)
def uniform_dropout_class() -> type:
    """The module class, made on first use (this file is imported on the torch-free config
    path). A Dropout subclass: the attention layers read its `.p`."""

    class UniformMaskDropout(torch.nn.Dropout):
        def forward(self, x):
            return uniform_dropout(x, self.p, self.training)

    return UniformMaskDropout


def uniform_mask_attention(module, query, key, value, attention_mask, scaling=None,
                           dropout=0.0, **kwargs):
    """Train mode with a rate: eager attention, probabilities dropped by `uniform_dropout`;
    otherwise transformers' SDPA attention (no dropping: the same numbers as without the knob).
    `attention_mask` is SDPA's (boolean or None): the mask builder registered with it."""
    if not module.training or dropout <= 0:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0,
                                      scaling=scaling, **kwargs)
    return eager_attention(query, key, value, attention_mask, scaling,
                           lambda probs: uniform_dropout(probs, dropout, True))


def draw_masks(model, masks) -> dict:
    """Make `model`'s Bernoulli dropout draw its masks as `masks` says; what was done, for the
    run record. Only plain torch Dropout modules are replaced (gaussian's are its own)."""
    masks = choice(masks)
    if masks == "bernoulli":
        return {}
    from cmift.dropout.sites import dropout_modules

    cls = uniform_dropout_class()
    plain = {n: m for n, m in dropout_modules(model).items() if type(m) is torch.nn.Dropout}
    if not plain:  # dropout=gaussian: its own noise everywhere, no masks to draw
        return {}
    for name, module in plain.items():
        parent_name, _, leaf = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, leaf, cls(module.p).train(module.training))
    register_attention(ATTENTION, uniform_mask_attention, "sdpa")
    return {"masks": masks, "attention": use_attention(model, ATTENTION, ("sdpa", "eager"))}
