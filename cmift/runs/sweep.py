"""Sweeps (Hydra multirun): a failed run is recorded and the sweep goes on; at the end the
sweep exits non-zero naming every failed run. Parallel launchers split the CPU threads."""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

FAILURES_ENV = "CMIFT_SWEEP_FAILURES"
PLAN_ENV = "CMIFT_SWEEP_PLAN"


class SweepReport(Callback):
    """Hydra callback: collects the sweep's failed runs (jobs append to a file, so this works
    for jobs in other processes too) and ends the sweep with exit code 1 when there are any;
    under plan=true, counts its runs by status instead."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        folder = Path(str(config.hydra.sweep.dir))
        # a plan writes nothing: Hydra's multirun.yaml (and the folder) are put back after it
        self._kept = (folder.is_dir(), _read_bytes(folder / "multirun.yaml"))
        folder.mkdir(parents=True, exist_ok=True)
        for env, name in ((FAILURES_ENV, "failed"), (PLAN_ENV, "plan")):
            path = folder / f".{name}-{os.getpid()}.txt"
            path.write_text("")
            os.environ[env] = str(path)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        failed, planned = (_take(env) for env in (FAILURES_ENV, PLAN_ENV))
        if config.get("plan"):
            runs = dict(line.split("\t", 1)[::-1] for line in planned)  # run dir -> status
            counts = Counter(runs.values())
            print(f"cmift: plan: {len(runs)} runs: " + ", ".join(
                f"{counts[s]} {s}" for s in PLAN_STATUSES if counts[s]))
            self._put_back(Path(str(config.hydra.sweep.dir)))
        if failed:
            print(f"cmift: {len(failed)} run(s) of the sweep failed:", file=sys.stderr)
            for line in failed:
                print(f"  {line}", file=sys.stderr)
            sys.exit(1)


    def _put_back(self, folder: Path) -> None:
        existed, multirun = getattr(self, "_kept", (True, None))
        path = folder / "multirun.yaml"
        if multirun is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(multirun)
        if not existed:
            try:
                folder.rmdir()
            except OSError:
                pass


def _read_bytes(path: Path) -> bytes | None:
    return path.read_bytes() if path.is_file() else None


def _take(env: str) -> list[str]:
    """The lines the sweep's jobs appended to the file named by `env`; the file is removed."""
    path = Path(os.environ.pop(env, "") or "/nonexistent")
    lines = path.read_text().splitlines() if path.is_file() else []
    path.unlink(missing_ok=True)
    return lines


# what plan=true says of each run, in the order its summary counts them
PLAN_STATUSES = ("finished", "partial", "failed", "invalid", "to run")


def plan_status(run_dir: Path) -> str:
    """finished | partial (a checkpoint or a record of a run not finished: it resumes) |
    failed | to run."""
    from cmift.runs.files import CKPT_DIR, METRICS_FILE, read_json

    try:
        status = read_json(run_dir / METRICS_FILE).get("status")
    except (OSError, ValueError):
        status = None
    if status == "ok":
        return "finished"
    if status not in (None, "failed") or any((run_dir / CKPT_DIR).glob("step-*.pt")):
        return "partial"
    return "failed" if status == "failed" else "to run"


def report_plan(run_dir: Path, root: Path, status: str, detail: str = "") -> None:
    """One line per run (`cmift: plan: <status> <run dir>`; a job that names a run already
    listed, such as ce under a lam sweep, is not listed again), and its status for the summary.
    Hydra made the run directory (and its parents under `root`, the output_dir) for the job:
    a run not started leaves none behind."""
    path = os.environ.get(PLAN_ENV)
    seen = Path(path).read_text() if path and Path(path).is_file() else ""
    if f"\t{run_dir}\n" not in seen:
        print(f"cmift: plan: {status:8s} {run_dir}" + (f" ({detail})" if detail else ""))
        if path:
            with open(path, "a") as f:
                f.write(f"{status}\t{run_dir}\n")
    root, folder = root.resolve(), run_dir.resolve()
    while folder != root and root in folder.parents:
        try:
            folder.rmdir()  # only when empty: nothing of a started run is touched
        except OSError:
            break
        folder = folder.parent


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
