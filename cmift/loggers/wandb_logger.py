"""logger=wandb: Weights & Biases, offline by default (<run dir>/wandb/, `wandb sync` later).
The config is the run's resolved config; steps and evaluations are logged at their optimiser
step; the final record's `final` and `best` go to the summary."""

from __future__ import annotations

import hashlib
from pathlib import Path

from cmift.loggers.base import STEP_KEYS, Logger, eval_scalars


class WandbLogger(Logger):
    def __init__(self, run_dir: Path, config: dict, logger_cfg):
        self.run_dir, self.config, self.cfg, self.run = run_dir, config, logger_cfg, None

    def start(self, step: int) -> None:
        try:
            import wandb
        except ImportError:
            from cmift.config.spec import ConfigError

            raise ConfigError("logger=wandb needs wandb: pip install -e '.[loggers]'") from None
        online = self.cfg.mode == "online"
        self.run = wandb.init(
            project=self.cfg.project, entity=self.cfg.entity, dir=str(self.run_dir),
            name=self.run_dir.name, config=self.config, mode=self.cfg.mode,
            # online, a resumed run continues the same W&B run (its id from the run directory)
            id=hashlib.sha256(str(self.run_dir.resolve()).encode()).hexdigest()[:16]
            if online else None, resume="allow" if online else None)

    def log_steps(self, rows: list[dict]) -> None:
        for row in rows:
            self.run.log({f"train/{k}": v for k, v in row.items() if k not in STEP_KEYS}
                         | {"epoch": row["epoch"]}, step=row["step"])

    def log_eval(self, entry: dict) -> None:
        self.run.log(eval_scalars(entry), step=entry["step"])

    def finish(self, record: dict) -> None:
        for key in ("final", "best"):
            for k, v in (record.get(key) or {}).items():
                self.run.summary[f"{key}/{k}"] = v

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
