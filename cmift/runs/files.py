"""Files of the output tree: their names, and writes that a kill can never leave torn."""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

from cmift import faults

SCHEMA_VERSION = 1
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.yaml"
STEPS_FILE = "steps.jsonl"
LOG_FILE = "run.log"
LOCK_FILE = "run.lock"
CKPT_DIR = "checkpoints"  # while a run is going: step-N.pt, best-weights.pt
MODEL_DIR = "model"  # final weights, config and tokenizer (from_pretrained)
TEACHERS_DIR = "teachers"  # <output_dir>/teachers/...: the teacher runs of distillation
TABLES_DIR = "tables"  # <folder>/tables/: what cmift-table writes


FULL_BELOW = 1 << 16  # bytes free under which a failed write is taken for a full disk


class DiskFull(OSError):
    """A write that ran out of space: one line naming the file, the space and what is kept."""

    def __str__(self) -> str:
        return str(self.strerror)


def _megabytes(n: int) -> str:
    return f"{n / 2**20:.1f} MB"


def disk_full(path: Path, written: int) -> DiskFull:
    """The one-line error for a write of `path` that ran out of space after `written` bytes."""
    where = Path(path).parent
    free = shutil.disk_usage(where).free if where.exists() else 0
    # how much it needs: about the size of the last file of its kind (the previous checkpoint)
    kin = [p for p in where.glob(f"*{path.suffix}") if not p.name.startswith(".")] \
        if where.exists() else []
    last = max(kin, key=lambda p: p.stat().st_mtime, default=None)
    previous = (f"; about {_megabytes(last.stat().st_size)} needed (the size of {last.name})"
                if last is not None else "")
    return DiskFull(errno.ENOSPC, f"no space left on the device of {where} writing {path.name}: "
                    f"{_megabytes(written)} written when it ran out{previous}, "
                    f"{_megabytes(free)} free now; every file written before is intact (a run "
                    "keeps its last good checkpoint): free space and run the same command again "
                    "to resume")


def _no_space(e: OSError) -> bool:
    return e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp makes 0600 files; a finished file gets the user's usual mode (0644 under umask 022),
# so lab-mates on a shared server can read the records
FILE_MODE = 0o666 & ~_umask()


def atomic_write(path: Path, write: Callable[[IO], None], binary: bool = False) -> None:
    """Write through `write(file)` to a temp file in the same folder, fsync, then rename over
    `path`: a kill at any moment leaves the previous complete file, never a torn one. Running
    out of space raises DiskFull (one line), with the previous file untouched. On a
    data-parallel run only rank 0 writes (every rank computes the same state)."""
    from cmift.ranks import RANKS

    if not RANKS.main:
        return
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as e:
        raise disk_full(path, 0) if _no_space(e) else e from None
    written = 0
    try:
        with os.fdopen(fd, "wb" if binary else "w") as f:
            write(f)
            f.flush()
            written = os.fstat(f.fileno()).st_size
            faults.write_fault(path.name)
            os.fsync(f.fileno())
        faults.kill_point(path.name)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        # torch.save reports a full disk as a RuntimeError ("unexpected pos ..."): judge by the
        # space left while the partial file still holds it
        size = Path(tmp).stat().st_size if Path(tmp).exists() else written
        full = isinstance(e, OSError) and _no_space(e) or \
            shutil.disk_usage(path.parent).free < FULL_BELOW
        Path(tmp).unlink(missing_ok=True)
        if full and not isinstance(e, DiskFull):
            raise disk_full(path, size) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def write_json(path: Path, data: Any) -> None:
    def dump(f) -> None:
        json.dump(data, f, indent=2, default=str)
        f.write("\n")

    atomic_write(path, dump)


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)
