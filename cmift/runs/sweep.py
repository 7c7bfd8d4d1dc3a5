"""Sweeps (Hydra multirun): a failed run is recorded and the sweep goes on; at the end the
sweep exits non-zero naming every failed run. Parallel launchers split the CPU threads."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

FAILURES_ENV = "CMIFT_SWEEP_FAILURES"


class SweepReport(Callback):
    """Hydra callback: collects the sweep's failed runs (jobs append to a file, so this works
    for jobs in other processes too) and ends the sweep with exit code 1 when there are any."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.sweep.dir))
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f".failed-{os.getpid()}.txt"
        path.write_text("")
        os.environ[FAILURES_ENV] = str(path)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        path = Path(os.environ.pop(FAILURES_ENV, "") or "/nonexistent")
        failed = path.read_text().splitlines() if path.is_file() else []
        path.unlink(missing_ok=True)
        if failed:
            print(f"cmift: {len(failed)} run(s) of the sweep failed:", file=sys.stderr)
            for line in failed:
                print(f"  {line}", file=sys.stderr)
            sys.exit(1)


def record_failure(run_dir: Path, message: str) -> None:
    path = os.environ.get(FAILURES_ENV)
    if path:
        with open(path, "a") as f:  # one short line per append: safe across processes
            f.write(f"{run_dir}: {message}\n")


def launcher_threads(hydra_cfg) -> int | None:
    """Torch threads per job when a parallel launcher runs several jobs on this machine."""
    launcher = hydra_cfg.launcher
    if "joblib" not in str(launcher.get("_target_", "")):
        return None
    n_jobs = launcher.get("n_jobs", -1) or 1
    cpus = os.cpu_count() or 1
    n_jobs = cpus if n_jobs < 0 else min(n_jobs, cpus)
    return max(1, cpus // n_jobs)
