"""The run directory: claiming it, atomic JSON writes, the manifest and the run log."""

from __future__ import annotations

import json
import logging
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import IO, Any, Callable

SCHEMA_VERSION = 1
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "manifest.json"
LOCK_FILE = "run.lock"
LOG_FILE = "run.log"
PACKAGES = ("cmift", "torch", "transformers", "datasets", "tokenizers", "hydra-core",
            "omegaconf", "numpy", "pandas", "safetensors", "rich")


def atomic_write(path: Path, write: Callable[[IO], None], binary: bool = False) -> None:
    """Write through `write(file)` to a temp file in the same folder, fsync, then rename over
    `path`: a kill at any moment leaves the previous complete file, never a torn one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    def dump(f) -> None:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")

    atomic_write(path, dump)


def write_failed(folder: Path, cfg, overrides: list[str], error: str) -> None:
    """The record of a run that could not start (a bad config in a sweep): status failed."""
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / METRICS_FILE, {
        "schema_version": SCHEMA_VERSION, "status": "failed", "task": cfg.task.name,
        "model": cfg.model.name, "objective": cfg.objective.name,
        "distillation": cfg.distillation.name, "seed": cfg.seed, "overrides": overrides,
        "run_dir": str(folder), "error": error, "evals": []})


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _try_lock(folder: Path) -> bool:
    """Take folder/run.lock for this process; a lock left by a dead process is taken over."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_FILE
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _pid_alive(pid) and pid != os.getpid():
                return False
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return True
    return False


def claim_run_dir(base: Path) -> Path:
    """The run directory for this process: `base`, or `base_2`, `base_3`, ... when a live process
    holds it (the same config started twice at once), so no two runs ever share a directory."""
    for n in range(1, 1000):
        folder = base if n == 1 else base.with_name(f"{base.name}_{n}")
        if _try_lock(folder):
            return folder
    raise RuntimeError(f"could not claim a run directory near {base}")


def release_run_dir(folder: Path) -> None:
    (folder / LOCK_FILE).unlink(missing_ok=True)


def finished_ok(folder: Path) -> bool:
    path = folder / METRICS_FILE
    try:
        return read_json(path).get("status") == "ok"
    except (OSError, ValueError):
        return False


def git_commit() -> dict:
    src = Path(__file__).resolve().parent
    def git(*args):
        out = subprocess.run(["git", *args], cwd=src, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() if out.returncode == 0 else None
    try:
        commit = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no")) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def manifest(device: str, threads: int) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "cwd": os.getcwd(),
        "git": git_commit(),
        "packages": package_versions(),
        "device": device,
        "torch_threads": threads,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "pid": os.getpid(),
    }


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
