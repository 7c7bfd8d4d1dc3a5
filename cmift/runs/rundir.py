"""Run directories: claiming one for this process, and whether a run there finished."""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock, Timeout

from cmift.runs.files import LOCK_FILE, METRICS_FILE, read_json

_held: dict[Path, FileLock] = {}  # the run directories this process holds


def _try_lock(folder: Path) -> bool:
    """Take folder/run.lock for this process, without waiting. An OS file lock (filelock:
    flock on POSIX, msvcrt on Windows): it dies with its process, so a killed run never
    leaves a directory locked, and no process id can be mistaken for another's."""
    if folder in _held:
        return True
    folder.mkdir(parents=True, exist_ok=True)
    lock = FileLock(folder / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    _held[folder] = lock
    return True


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
    """The lock file stays (removing it would race a process about to lock it)."""
    lock = _held.pop(folder, None)
    if lock is not None:
        lock.release()


def is_locked(folder: Path) -> bool:
    """Whether a live process holds `folder` now (this one included)."""
    if folder in _held:
        return True
    if not (folder / LOCK_FILE).exists():
        return False
    probe = FileLock(folder / LOCK_FILE)
    try:
        probe.acquire(timeout=0)
    except Timeout:
        return True
    probe.release()
    return False


def finished_ok(folder: Path) -> bool:
    try:
        return read_json(folder / METRICS_FILE).get("status") == "ok"
    except (OSError, ValueError):
        return False
