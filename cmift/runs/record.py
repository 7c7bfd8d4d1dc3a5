"""The run record, metrics.json: the one place that builds and updates it.

It is rewritten atomically at every change (start, teacher found, each evaluation, finish or
failure), so the run directory is always the source of truth, even after a kill.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

from omegaconf import DictConfig

from cmift.config.identity import config_hash, identity, task_label
from cmift.runs.files import METRICS_FILE, SCHEMA_VERSION, DiskFull, write_json
from cmift.runs.scores import best_index


def command_overrides() -> list[str]:
    """The overrides this process was started with (Hydra's task overrides; none outside Hydra):
    what a run's record keeps."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class RunRecord:
    def __init__(self, folder: Path, data: dict):
        self.folder, self.data = Path(folder), data

    @classmethod
    def start(cls, cfg: DictConfig, folder: Path, overrides: list[str]) -> "RunRecord":
        """A running run: what it is, and every setting that names it (for the tables)."""
        record = cls(folder, {
            **cls._header(cfg, folder, overrides), "status": "running",
            "config_hash": config_hash(cfg), "started": _now(),
            "config": identity(cfg), "evals": []})
        record.write()
        return record

    @classmethod
    def failed_to_start(cls, cfg: DictConfig, folder: Path, overrides: list[str],
                        error: str) -> "RunRecord":
        """A run that could not start (a bad config in a sweep): status failed."""
        folder.mkdir(parents=True, exist_ok=True)
        try:  # its settings, for the tables: a failure is shown in its method's cell
            settings = {"config_hash": config_hash(cfg), "config": identity(cfg)}
        except Exception:  # noqa: BLE001 (a config too broken to name)
            settings = {}
        record = cls(folder, {**cls._header(cfg, folder, overrides), "status": "failed",
                              **settings, "error": error, "evals": []})
        record.write()
        return record

    @staticmethod
    def _header(cfg: DictConfig, folder: Path, overrides: list[str]) -> dict:
        return {"schema_version": SCHEMA_VERSION, "task": task_label(cfg),
                "mixture": cfg.mixture.name if "mixture" in cfg else "none",
                "model": cfg.model.name, "objective": cfg.objective.name,
                "distillation": cfg.distillation.name, "dropout": cfg.dropout.name,
                "tuning": cfg.tuning.name,
                "seed": cfg.seed,
                "overrides": overrides, "run_dir": str(folder)}

    def write(self) -> None:
        write_json(self.folder / METRICS_FILE, self.data)

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.write()

    def fail(self, error: BaseException) -> None:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        try:
            self.update(status=status, error=f"{type(error).__name__}: {error}")
        except DiskFull:  # the disk that stopped the run: the record keeps its last state
            pass

    def finish(self, result, peak_memory_mb: dict, extra: Optional[dict] = None) -> None:
        """Status ok, with the final and best evaluations and what the run cost."""
        last = result.evals[-1]
        # the best evaluation by the selection split when the run has one: dev is for reporting
        best = result.evals[best_index(result.evals)]
        per_second = lambda n, s: round(n / max(s, 1e-9), 2)  # noqa: E731
        self.update(
            status="ok", evals=result.evals,  # also when no evaluation ran since a resume
            final={"step": last["step"], "epoch": last["epoch"], **last["dev"]},
            best={"step": best["step"], "epoch": best["epoch"], **best["dev"]},
            steps=result.steps, skipped_steps=result.skipped_steps,
            epochs=result.epochs_done, train_examples=result.train_examples,
            train_seconds=round(result.train_seconds, 3),
            train_examples_per_second=per_second(result.train_examples, result.train_seconds),
            # the objective's no-grad passes (CMI centroids), included in train_seconds
            pass_seconds=round(result.pass_seconds, 3),
            train_tokens=result.train_tokens,  # padded tokens the steps processed
            eval_seconds=round(result.eval_seconds, 3),
            eval_examples_per_second=per_second(result.eval_examples, result.eval_seconds),
            peak_memory_mb=peak_memory_mb, finished=_now(),
            # the step whose weights model/ and the predictions come from
            weights_step=result.kept_step if result.kept_step is not None else result.steps,
            stopped_early=result.stopped_early, **(extra or {}))
