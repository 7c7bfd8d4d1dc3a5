"""Students made from a teacher backbone by keeping a subset of its layers (DistilBERT's
recipe: embeddings plus every other layer), so a pair exists for every backbone."""

from __future__ import annotations

from cmift.config.spec import ConfigError


def layer_list(model):
    """(parent module, attribute name) of the encoder's stack of transformer layers."""
    for owner in ("bert.encoder", "distilbert.transformer", "roberta.encoder", "encoder"):
        module = model
        for part in owner.split("."):
            module = getattr(module, part, None)
        if module is not None:
            for attr in ("layer", "layers"):
                if hasattr(module, attr):
                    return module, attr
    raise ConfigError(f"distillation.student=null is not allowed for {type(model).__name__}: "
                      "its layers were not found; name a student model (distillation.student=...)")


def keep_layers(model, layers: list[int] | None):
    """A student made from `model` by keeping `layers` of its encoder (default: every other
    layer, DistilBERT's recipe); the kept weights are copied exactly."""
    import copy

    import torch

    student = copy.deepcopy(model)
    parent, attr = layer_list(student)
    stack = getattr(parent, attr)
    n = len(stack)
    layers = list(range(0, n, 2)) if layers is None else list(layers)
    if not layers or any(not 0 <= i < n for i in layers) or len(set(layers)) != len(layers):
        raise ConfigError(f"distillation.student_layers={layers} is not allowed: distinct "
                          f"layer indices in 0..{n - 1}")
    setattr(parent, attr, torch.nn.ModuleList([stack[i] for i in layers]))
    for key in ("num_hidden_layers", "n_layers"):
        if hasattr(student.config, key):
            setattr(student.config, key, len(layers))
    return student, layers
