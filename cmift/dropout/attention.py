"""Attention whose probabilities cmift drops itself.

transformers' attention layers pass their dropout module's p to the attention function, and
SDPA drops the probabilities inside torch, out of reach of a replaced module. A dropout method
that changes how dropping is done (gaussian noise; uniform-draw masks) registers an attention
function built on `eager_attention`, which applies its `drop` to the probabilities.
"""

from __future__ import annotations

from functools import lru_cache

from cmift.lazy import F, torch


def eager_attention(query, key, value, attention_mask, scaling, drop):
    """Scaled dot-product attention in plain torch (transformers' eager maths); `drop` acts on
    the probabilities. `attention_mask`: additive (eager's) or boolean, True = attend (SDPA's)."""
    scaling = query.size(-1) ** -0.5 if scaling is None else scaling
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        if attention_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
        else:
            scores = scores + attention_mask
    probs = drop(F.softmax(scores, dim=-1))
    return torch.matmul(probs, value).transpose(1, 2).contiguous(), probs


@lru_cache(maxsize=None)
def register_attention(name: str, function, mask: str) -> None:
    """Register `function` under `name`, with the mask builder of attention `mask` (eager: an
    additive float mask; sdpa: boolean or none). Unregistered, the padding mask is dropped."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    AttentionInterface.register(name, function)
    AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[mask])


def use_attention(model, name: str, replacing: tuple[str, ...] | None = None) -> str:
    """Point the transformers model in `model` (itself, or the first one inside it, such as a
    multi-task model's encoder) at attention `name`, when its current one is in `replacing`
    (None: always); the implementation it then uses."""
    hf = next(m for m in model.modules() if hasattr(m, "set_attn_implementation"))
    if replacing is None or hf.config._attn_implementation in replacing:
        hf.set_attn_implementation(name)
    return hf.config._attn_implementation
