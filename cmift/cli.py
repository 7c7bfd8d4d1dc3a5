"""Entry points: `cmift` (Hydra app) and `python -m cmift`. Nothing else lives here.

Only the config schema is imported up front: torch and transformers load inside the job, so
`cmift --help` and config errors answer fast.
"""

from __future__ import annotations

import contextlib
import errno
import math
import os
import signal
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from cmift.config.identity import register_resolvers
from cmift.config.schema import CONF_DIR, MOVED_KEYS, register_configs
from cmift.config.spec import ConfigError
from cmift.ranks import launched
from cmift.runs.scores import run_score

register_configs()
register_resolvers()


class Terminated(KeyboardInterrupt):
    """SIGTERM (SLURM preemption, `timeout`, a session ending): handled like Ctrl-C."""


def _terminate(signum, frame) -> None:
    raise Terminated()


def _fail(message: str, code: int = 2) -> None:
    """One line on stderr: exit 2 for a mistake in the input, 1 for a run that failed."""
    print(f"cmift: error: {message}", file=sys.stderr)
    sys.exit(code)


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _job(cfg: DictConfig) -> float:
    """One run; returns its score for Hydra's sweepers (see cmift.runs.scores.run_score)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from cmift.config.validate import validate
    from cmift.data.tasks import DataError
    from cmift.runs.record import RunRecord
    from cmift.runs.rundir import claim_run_dir, finished_ok, release_run_dir
    from cmift.runs.sweep import launcher_threads, plan_status, record_failure, report_plan

    hydra_cfg = HydraConfig.get()
    base = Path(hydra_cfg.runtime.output_dir)
    sweeping = hydra_cfg.mode == RunMode.MULTIRUN
    try:
        # before anything heavy is imported: a bad value answers at once
        validate(cfg, list(hydra_cfg.overrides.task))
    except ConfigError as e:
        if cfg.plan and sweeping:
            report_plan(base, Path(cfg.output_dir), "invalid", str(e))
            return -math.inf
        if not sweeping:
            _fail(str(e))
        RunRecord.failed_to_start(cfg, base, list(hydra_cfg.overrides.task), str(e))
        print(f"cmift: run {base} failed: {e}", file=sys.stderr)
        record_failure(base, str(e))
        return -math.inf
    if cfg.plan:
        status = plan_status(base)
        report_plan(base, Path(cfg.output_dir),
                    "to run" if cfg.rerun and status == "finished" else status)
        if not sweeping:  # a sweep's folder is put back by SweepReport; a run's is here
            with contextlib.suppress(OSError):
                Path(cfg.output_dir).rmdir()  # only when empty
        return _finished_score(base) if status == "finished" else -math.inf
    if finished_ok(base) and not cfg.rerun:
        print(f"cmift: {base} already finished ok; skipped (rerun=true runs it again)")
        return _finished_score(base)
    if launched() > 1:
        return _data_parallel_job(cfg, base)
    try:
        run_dir = claim_run_dir(base, exclusive=sweeping)
    except OSError as e:  # output_dir a file, read-only, or on a full disk
        _fail(f"output_dir={cfg.output_dir!r} cannot hold the run directory {base}: "
              f"{e.strerror or e}")
    if run_dir is None:  # another sweep is training this configuration now
        print(f"cmift: {base} is being trained by another process; skipped")
        return -math.inf
    if run_dir == base and finished_ok(base) and not cfg.rerun:  # finished while we waited
        release_run_dir(run_dir)
        print(f"cmift: {base} already finished ok; skipped (rerun=true runs it again)")
        return _finished_score(base)
    from cmift.runs.preemption import Preempted, requeue, take_over_requeue

    submitit_requeue = take_over_requeue()
    try:
        from cmift.training.run import run

        if cfg.threads is None and (threads := launcher_threads(hydra_cfg)):
            import torch

            torch.set_num_threads(threads)
        return run_score(run(cfg, run_dir))
    except Preempted:
        print(f"cmift: preempted; a checkpoint is in {run_dir}: the job is requeued and "
              "resumes there", file=sys.stderr)
        release_run_dir(run_dir)
        requeue(submitit_requeue)
    except KeyboardInterrupt as e:
        how, code = ("terminated", 143) if isinstance(e, Terminated) else ("interrupted", 2)
        _fail(f"{how}; a checkpoint and the partial run are in {run_dir}: run the command "
              "again to resume", code)
    except Exception as e:
        from cmift.runs.files import DiskFull
        from cmift.training.loop import NonFiniteLoss

        plain = (ConfigError, DataError, DiskFull)
        message = str(e) if isinstance(e, plain) else f"{type(e).__name__}: {e}"
        if not sweeping:
            if isinstance(e, (ConfigError, DataError)):
                _fail(message)
            if isinstance(e, DiskFull):  # the environment, not the run: fixable, like a bad input
                _fail(f"run {run_dir} stopped: {e}")
            if isinstance(e, NonFiniteLoss):
                _fail(f"run {run_dir} stopped: {e}", code=1)
            raise
        # In a sweep the failure is recorded (metrics.json, run.log) and the sweep goes on.
        print(f"cmift: run {run_dir} failed: {message}", file=sys.stderr)
        record_failure(run_dir, message)
    finally:
        release_run_dir(run_dir)
    return -math.inf


def _data_parallel_job(cfg: DictConfig, base: Path) -> float:
    """One run on every rank torchrun started (cmift/ranks.py): rank 0 claims
    the run directory and names it to the others; only rank 0 writes."""
    from cmift.ranks import start
    from cmift.runs.rundir import claim_run_dir, release_run_dir

    ranks = start()
    run_dir = None
    if ranks.main:
        try:
            run_dir = claim_run_dir(base)
        except OSError as e:
            run_dir = e
    run_dir = ranks.broadcast(run_dir)
    if isinstance(run_dir, OSError):
        _fail(f"output_dir={cfg.output_dir!r} cannot hold the run directory {base}: "
              f"{run_dir.strerror or run_dir}")
    try:
        from cmift.training.run import run

        return run_score(run(cfg, run_dir))
    except KeyboardInterrupt as e:
        how, code = ("terminated", 143) if isinstance(e, Terminated) else ("interrupted", 2)
        _fail(f"{how}; the last checkpoint and the partial run are in {run_dir}: run the "
              "command again to resume", code)
    except ConfigError as e:
        _fail(str(e))
    finally:
        if ranks.main:
            release_run_dir(run_dir)


def _finished_score(run_dir: Path) -> float:
    import json

    from cmift.runs.files import METRICS_FILE

    return run_score(json.loads((run_dir / METRICS_FILE).read_text()))


WRITE_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST, errno.EACCES, errno.EPERM,
                errno.EROFS, errno.ENOSPC}


def _one_line(error: BaseException) -> str:
    """Hydra / OmegaConf messages span lines (options, full_key, object_type): keep what names
    the key, the value and what is allowed, on one line."""
    parts = []
    for e in (error, error.__cause__):
        for line in str(e or "").split("Config search path")[0].splitlines():
            line = line.strip()
            if line and not line.startswith(("full_key:", "object_type=", "reference_type=",
                                             "Set the environment variable")):
                parts.append(line.rstrip(".:"))
    return "; ".join(dict.fromkeys(parts))


def main() -> None:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    # Hydra then re-raises composition errors instead of printing a trace and exiting 1; they
    # become one line and exit code 2 here.
    os.environ.setdefault("HYDRA_FULL_ERROR", "1")
    signal.signal(signal.SIGTERM, _terminate)
    ranks = launched()
    if ranks > 1 and ({"-m", "--multirun"} & set(sys.argv[1:])):
        # every rank would run the whole sweep; one torchrun trains one run
        _fail(f"-m is not allowed under torchrun (WORLD_SIZE={ranks}): one torchrun trains one "
              "data-parallel run; sweep with one torchrun per job (README: Data-parallel)")
    for arg in sys.argv[1:]:
        key = arg.lstrip("+~").split("=", 1)[0]
        if key in MOVED_KEYS:
            _fail(f"{key} is now {MOVED_KEYS[key]} (each method's knobs live in its own "
                  "namespace; `cmift --help` lists them)")
    try:
        _job()
    except (HydraException, OmegaConfBaseException) as e:
        _fail(_one_line(e))
    except OSError as e:
        # Hydra creates the run directory before the job: output_dir a file, read-only, or on a
        # filesystem that holds no folders
        if e.filename is None or e.errno not in WRITE_ERRNOS:
            raise
        _fail(f"cannot write {e.filename}: {e.strerror} (check output_dir / hydra.run.dir)")
    except ValueError as e:  # Hydra's own command-line rules, e.g. `-m` with `--cfg`
        if "Config group override" in str(e):  # `logger=null`: a group takes an option name
            nulls = [a for a in sys.argv[1:] if a.endswith("=null")] or ["a group=null"]
            _fail(f"{nulls[0]} is not allowed: a config group takes one of its options "
                  f"(`cmift --help` lists them)")
        if "can be specified" not in str(e):
            raise
        _fail(str(e))


def table_main(argv: list[str] | None = None) -> None:
    """`cmift-table outputs/ [--format md,tex,csv] [--epoch last|best]`."""
    import argparse

    ap = argparse.ArgumentParser(prog="cmift-table", description="GLUE tables from run folders")
    ap.add_argument("folders", nargs="*", default=["outputs"])
    ap.add_argument("--format", default="md,tex,csv", help="comma list of md, tex, csv")
    ap.add_argument("--epoch", choices=["last", "best"], default="last",
                    help="report each run's last evaluation or its best (by dev score)")
    ap.add_argument("--out", default=None, help="default: <first folder>/tables")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--tune", default="", help="comma list of more keys chosen per task on the "
                    "selection split, e.g. train.lr,train.epochs (the ce recipe)")
    args = ap.parse_args(argv)
    tune = tuple(k.strip() for k in args.tune.split(",") if k.strip())
    formats = [f.strip() for f in args.format.split(",") if f.strip()]
    bad = sorted(set(formats) - {"md", "tex", "csv"})
    if bad:
        _fail(f"--format {','.join(bad)} is not allowed: a comma list of md, tex, csv")
    missing = [f for f in args.folders if not Path(f).is_dir()]
    if missing:
        _fail(f"no such folder: {', '.join(missing)}")
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    from cmift.report.summarize import write_tables

    out = Path(args.out or Path(args.folders[0]) / "tables")
    result = write_tables(args.folders, out, formats, args.epoch, plots=not args.no_plots,
                          tune=tune)
    console = Console()
    if not result["runs"]:
        _fail(f"no metrics.json under {', '.join(args.folders)}")
    base = result["delta"].attrs.get("baseline", "ce")
    for title, frame in (("GLUE dev", result["glue"]), (f"difference to {base}, paired by seed",
                                                          result["delta"]),
                         ("mixtures: proportion of batches per task", result.get("mixtures"))):
        if frame is None or frame.empty:
            continue
        table = Table(title=title, show_lines=False)
        table.add_column("method")
        for col in frame.columns:
            table.add_column(str(col))
        for method, row in frame.iterrows():
            cells = [escape(str(v)) if isinstance(v, str) else "—" for v in row]
            table.add_row(escape(str(method)), *cells)
        console.print(table)
    console.print(result["rule"], markup=False)
    console.print(f"{result['runs']} runs; wrote " + ", ".join(str(p) for p in result["files"]),
                  markup=False)


if __name__ == "__main__":
    main()
