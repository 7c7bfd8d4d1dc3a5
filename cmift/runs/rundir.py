"""Run directories: claiming one for this process, and whether a run there finished."""

from __future__ import annotations

import os
from pathlib import Path

from cmift.runs.files import LOCK_FILE, METRICS_FILE, read_json


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


def claim_run_dir(base: Path, exclusive: bool = False) -> Path | None:
    """The run directory for this process: `base`, or `base_2`, `base_3`, ... when a live process
    holds it (the same config started twice at once), so no two runs ever share a directory.
    `exclusive` (sweeps): None when a live process holds `base`, so two sweeps over overlapping
    configurations train each configuration once."""
    for n in range(1, 1000):
        folder = base if n == 1 else base.with_name(f"{base.name}_{n}")
        if _try_lock(folder):
            drop_temp_files(folder)
            return folder
        if exclusive:
            return None
    raise RuntimeError(f"could not claim a run directory near {base}")


def drop_temp_files(folder: Path) -> None:
    """Temp files of atomic writes that a killed process left behind (`.<name>.<random>`):
    never read, only in the way. The lock makes this process the folder's only writer."""
    for sub in (folder, folder / "checkpoints"):
        for path in sub.glob(".*") if sub.is_dir() else ():
            if path.is_file():
                path.unlink(missing_ok=True)


def release_run_dir(folder: Path) -> None:
    (folder / LOCK_FILE).unlink(missing_ok=True)


def finished_ok(folder: Path) -> bool:
    try:
        return read_json(folder / METRICS_FILE).get("status") == "ok"
    except (OSError, ValueError):
        return False
