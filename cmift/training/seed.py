"""Seeding every generator a run draws from (Python, NumPy, torch on every device): what
transformers.set_seed does, without importing transformers' Trainer utilities (which pull in
peft and dozens of model files: seconds of every run's start)."""

from __future__ import annotations

import random

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # seeds every CUDA device too
    torch.cuda.manual_seed_all(seed)  # (a no-op without CUDA; kept as transformers has it)
