"""Loggers (`logger=none|csv|tensorboard|wandb`), Lightning-style: copies of what a run records,
for the tools researchers watch runs with. The run directory stays the source of truth; a
logger receives the resolved config, every optimiser step's loss terms and learning rate (at
each log interval), every evaluation, and the final record. `start(step)` tells it where
training (re)starts, so a resumed run replaces the steps it repeats."""

from __future__ import annotations

from pathlib import Path

from cmift.config.spec import choice
from cmift.loggers.base import Logger


def build(logger_cfg, run_dir: Path, config: dict) -> Logger:
    from cmift.ranks import RANKS

    name = choice(logger_cfg.name) if RANKS.main else "none"  # data-parallel: rank 0 logs
    if name == "csv":
        from cmift.loggers.csv_logger import CsvLogger

        return CsvLogger(run_dir, config)
    if name == "tensorboard":
        from cmift.loggers.tensorboard_logger import TensorBoardLogger

        return TensorBoardLogger(run_dir, config)
    if name == "wandb":
        from cmift.loggers.wandb_logger import WandbLogger

        return WandbLogger(run_dir, config, logger_cfg)
    return Logger()
