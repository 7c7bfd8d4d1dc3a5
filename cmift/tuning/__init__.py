"""Which weights train (`tuning=`): a method group that composes with every objective.

`full` trains every weight (what every run did before the group); `prefix` and `prompt` are
parameter-efficient methods from the `peft` library on a frozen encoder (L-Tuning's baselines,
arXiv 2402.01643); `lt_prefix` and `lt_prompt` are L-Tuning itself (label_tuning.py). Each
file declares its spec and knobs (torch-free) and implements
`apply(model, cfg, model_cfg, tokenizer) -> model`; the model returned is the one trained,
evaluated and saved. It is applied after the dropout method (which reads the plain backbone).
"""

from __future__ import annotations

from typing import Any

from cmift.config.spec import discover, implementations

IMPLEMENTATIONS: dict[str, Any] = {}
implements = implementations(IMPLEMENTATIONS)


def apply_tuning(model, cfg, model_cfg, tokenizer=None):
    """(the model to train, its setup for the run record: method, trainable and total
    parameter counts). The tokenizer encodes label texts (label-token tuning)."""
    discover()
    tuned = IMPLEMENTATIONS[cfg.tuning.name](model, cfg, model_cfg, tokenizer=tokenizer)
    trainable = sum(p.numel() for p in tuned.parameters() if p.requires_grad)
    total = sum(p.numel() for p in tuned.parameters())
    return tuned, {"method": cfg.tuning.name, "trainable_parameters": trainable,
                   "total_parameters": total}


def trains_part(model) -> bool:
    """Some weights are frozen (a parameter-efficient method)."""
    return not all(p.requires_grad for p in model.parameters())


def trained_state(model) -> dict:
    """What a checkpoint keeps of the model: every tensor, or, when part of it is frozen, only
    the trained ones (the frozen encoder is rebuilt identically from its pretrained weights)."""
    state = model.state_dict()
    if not trains_part(model):
        return state
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in trained}


def load_trained_state(model, state: dict) -> None:
    if not trains_part(model):
        model.load_state_dict(state)
        return
    unexpected = model.load_state_dict(state, strict=False).unexpected_keys
    if unexpected:
        raise RuntimeError(f"checkpoint tensors the model does not have: {unexpected[:5]}")
