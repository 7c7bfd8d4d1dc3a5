"""`tuning=prefix` and `tuning=prompt`: peft's PrefixTuningConfig / PromptTuningConfig with
task_type SEQ_CLS, on a frozen encoder; the classifier head trains too (peft's
modules_to_save for SEQ_CLS).

- prefix: `virtual_tokens` trainable key and value vectors in every layer (the P-tuning v2
  layout), optionally produced by a 2-layer MLP (`projection`). Trainable parameters:
  virtual_tokens x layers x 2 x hidden (without projection) plus the head.
- prompt: `virtual_tokens` trainable input embeddings before the text's. Trainable parameters:
  virtual_tokens x hidden plus the head.
"""

from __future__ import annotations

from dataclasses import dataclass

from cmift.config.spec import (
    POSITIVE_INT,
    ConfigError,
    MethodSpec,
    knob,
    register,
    register_knobs,
)
from cmift.models.backbones import cache_argument
from cmift.tuning import implements


@register_knobs("tuning.prefix")
@dataclass
class PrefixKnobs:
    virtual_tokens: int = knob(20, POSITIVE_INT)
    projection: bool = False  # prefixes through a 2-layer MLP (peft's prefix_projection)
    projection_hidden: int = knob(512, POSITIVE_INT)


@register_knobs("tuning.prompt")
@dataclass
class PromptKnobs:
    virtual_tokens: int = knob(20, POSITIVE_INT)


register(MethodSpec("tuning", "prefix", "prefix tuning on a frozen encoder (peft)",
                    reads=("tuning.prefix",)),
         MethodSpec("tuning", "prompt", "prompt tuning on a frozen encoder (peft)",
                    reads=("tuning.prompt",)))


def _peft():
    try:
        import peft
    except ImportError:
        raise ConfigError("tuning=prefix and tuning=prompt need peft: pip install -e "
                          "'.[peft]'") from None
    return peft


@implements("prefix")
def prefix(model, cfg, model_cfg, **_):
    peft = _peft()
    if not takes_past_key_values(model):
        raise ConfigError(f"tuning=prefix is not allowed for model {model_cfg.name} "
                          f"({type(model).__name__}): its attention takes no past key/values; "
                          "use tuning=prompt or tuning=full")
    knobs = cfg.tuning.prefix
    config = peft.PrefixTuningConfig(
        task_type=peft.TaskType.SEQ_CLS, num_virtual_tokens=knobs.virtual_tokens,
        prefix_projection=knobs.projection, encoder_hidden_size=knobs.projection_hidden,
        **_shape(model))
    return peft.get_peft_model(model, config)


@implements("prompt")
def prompt(model, cfg, model_cfg, **_):
    peft = _peft()
    config = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_CLS,
                                     num_virtual_tokens=cfg.tuning.prompt.virtual_tokens,
                                     **_shape(model))
    return peft.get_peft_model(model, config)


def takes_past_key_values(model) -> bool:
    """Prefixes enter attention as past key/values; DistilBERT's attention takes none."""
    return cache_argument(model) is not None


def _shape(model) -> dict:
    """The sizes peft needs, read through transformers' attribute names (peft looks for
    hidden_size etc. in the raw config, which DistilBERT spells dim, n_heads, n_layers)."""
    config = model.config
    return {"token_dim": model.get_input_embeddings().embedding_dim,
            "num_attention_heads": config.num_attention_heads,
            "num_layers": config.num_hidden_layers}
