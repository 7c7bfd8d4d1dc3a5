"""logger=tensorboard: <run dir>/tensorboard/ through torch's SummaryWriter
(`tensorboard --logdir outputs/`): train/<term> and train/lr per step, dev/<metric> and
selection/<metric> per evaluation, the config as text."""

from __future__ import annotations

from pathlib import Path

import yaml

from cmift.loggers.base import STEP_KEYS, Logger, eval_scalars


class TensorBoardLogger(Logger):
    def __init__(self, run_dir: Path, config: dict):
        self.folder, self.config, self.writer = run_dir / "tensorboard", config, None

    def start(self, step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            from cmift.config.spec import ConfigError

            raise ConfigError("logger=tensorboard needs the tensorboard package: pip install "
                              "tensorboard (or pip install -e '.[loggers]')") from None
        # purge_step: a resumed run's repeated steps replace the events written after it
        self.writer = SummaryWriter(str(self.folder), purge_step=step or None)
        if not step:
            self.writer.add_text("config", "```yaml\n" + yaml.safe_dump(self.config) + "```")

    def log_steps(self, rows: list[dict]) -> None:
        for row in rows:
            for k, v in row.items():
                if k not in STEP_KEYS:
                    self.writer.add_scalar(f"train/{k}", v, row["step"])

    def log_eval(self, entry: dict) -> None:
        for k, v in eval_scalars(entry).items():
            self.writer.add_scalar(k, v, entry["step"])
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
