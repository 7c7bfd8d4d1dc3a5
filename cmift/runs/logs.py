"""Logging: the console (rich on a terminal, plain lines in a pipe) and <run dir>/run.log."""

from __future__ import annotations

import logging
from pathlib import Path

from cmift.runs.files import LOG_FILE


def _job_prefix() -> str:
    """In a sweep, `[#<job number>] ` before each console line: parallel jobs (joblib, several
    sweeps) interleave their lines. The run's own run.log needs none."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return f"[#{HydraConfig.get().job.num}] "
    except (ImportError, ValueError):
        pass
    return ""


def setup_logging(folder: Path) -> logging.Logger:
    """Console (rich) and <run dir>/run.log; replaces handlers from a previous run in-process."""
    from rich.logging import RichHandler

    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_cmift", False):
            root.removeHandler(h)
            h.close()
    from rich.console import Console

    prefix = _job_prefix()
    if Console(stderr=True).is_terminal:
        console = RichHandler(console=Console(stderr=True), show_path=False, markup=False)
        console.setFormatter(logging.Formatter(f"{prefix}%(message)s"))
    else:  # logs piped to a file: one plain line per record, no wrapping
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(message)s", "%H:%M:%S"))
    console.addFilter(lambda record: not getattr(record, "file_only", False))
    handlers = [console]
    from cmift.ranks import RANKS

    if RANKS.main:  # data-parallel: rank 0 keeps run.log; the others say only what goes wrong
        file = logging.FileHandler(folder / LOG_FILE)
        file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        handlers.append(file)
    else:
        console.setLevel(logging.WARNING)
    for h in handlers:
        h._cmift = True
        root.addHandler(h)
    root.setLevel(logging.INFO)
    for noisy in ("datasets", "httpx", "urllib3", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # errors only, as the run sets transformers' verbosity: WARNING here would undo that for a
    # student loaded after its teacher's run (its LOAD REPORT of the new head on the console)
    logging.getLogger("transformers").setLevel(logging.ERROR)
    import datasets

    datasets.disable_progress_bars()
    return logging.getLogger("cmift")
