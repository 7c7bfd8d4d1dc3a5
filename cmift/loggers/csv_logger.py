"""logger=csv: <run dir>/logs/metrics.csv (one row per logged step or evaluation, the union of
their columns, as Lightning's CSVLogger writes it) and logs/hparams.yaml (the config)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import yaml

from cmift.loggers.base import Logger, eval_scalars
from cmift.runs.files import write_text


class CsvLogger(Logger):
    def __init__(self, run_dir: Path, config: dict):
        self.folder = run_dir / "logs"
        self.folder.mkdir(parents=True, exist_ok=True)
        write_text(self.folder / "hparams.yaml", yaml.safe_dump(config, sort_keys=False))
        self.path = self.folder / "metrics.csv"
        self.rows: list[dict] = []

    def start(self, step: int) -> None:
        if step and self.path.is_file():  # resumed: keep what came before the checkpoint
            kept = pd.read_csv(self.path)
            self.rows = kept[kept["step"] <= step].to_dict("records")

    def log_steps(self, rows: list[dict]) -> None:
        self.rows.extend({f"train/{k}" if k not in ("step", "epoch") else k: v
                          for k, v in row.items()} for row in rows)
        self._write()

    def log_eval(self, entry: dict) -> None:
        self.rows.append({"step": entry["step"], "epoch": entry["epoch"],
                          **eval_scalars(entry)})
        self._write()

    def _write(self) -> None:
        write_text(self.path, pd.DataFrame(self.rows).to_csv(index=False))
