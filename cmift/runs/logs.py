"""Logging: the console (rich on a terminal, plain lines in a pipe) and <run dir>/run.log."""

from __future__ import annotations

import logging
from pathlib import Path

from cmift.runs.files import LOG_FILE


def setup_logging(folder: Path) -> logging.Logger:
    """Console (rich) and <run dir>/run.log; replaces handlers from a previous run in-process."""
    from rich.logging import RichHandler

    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_cmift", False):
            root.removeHandler(h)
            h.close()
    from rich.console import Console

    if Console(stderr=True).is_terminal:
        console = RichHandler(console=Console(stderr=True), show_path=False, markup=False)
        console.setFormatter(logging.Formatter("%(message)s"))
    else:  # logs piped to a file: one plain line per record, no wrapping
        console = logging.StreamHandler()
        console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    console.addFilter(lambda record: not getattr(record, "file_only", False))
    file = logging.FileHandler(folder / LOG_FILE)
    file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    for h in (console, file):
        h._cmift = True
        root.addHandler(h)
    root.setLevel(logging.INFO)
    for noisy in ("transformers", "datasets", "httpx", "urllib3", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    import datasets

    datasets.disable_progress_bars()
    return logging.getLogger("cmift")
