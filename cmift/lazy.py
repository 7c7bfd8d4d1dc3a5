"""torch, imported on first use: method modules (objectives) hold their torch-free specs next to
their losses, and the config path (`cmift --help`, config errors, run names) must not pay for
importing torch when it only reads the specs."""

from __future__ import annotations

import importlib


class LazyModule:
    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)


torch = LazyModule("torch")
F = LazyModule("torch.nn.functional")
