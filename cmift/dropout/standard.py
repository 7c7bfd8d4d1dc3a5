"""`dropout=standard` (the checkpoint's own rates, what every run did before this group) and
`dropout=none` (p = 0 in every dropout module, the classifier head's included)."""

from __future__ import annotations

from cmift.config.spec import MethodSpec, register
from cmift.dropout import implements, rates
from cmift.dropout.sites import dropout_modules

register(MethodSpec("dropout", "standard", "the checkpoint's own dropout rates (BERT: 0.1)"),
         MethodSpec("dropout", "none", "no dropout anywhere (p = 0, the head's included)"))


@implements("standard")
def keep(model, context) -> dict:
    return {"rates": rates(model)}  # reads, sets nothing: results as before the group existed


@implements("none")
def switch_off(model, context) -> dict:
    for module in dropout_modules(model).values():
        module.p = 0.0
    return {"rates": rates(model)}
