"""`tuning=full`: every weight trains."""

from __future__ import annotations

from cmift.config.spec import MethodSpec, register
from cmift.tuning import implements

register(MethodSpec("tuning", "full", "every weight trains"))


@implements("full")
def full(model, cfg, model_cfg, **_):
    return model
