"""Files of the output tree: their names, and writes that a kill can never leave torn."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

SCHEMA_VERSION = 1
METRICS_FILE = "metrics.json"
MANIFEST_FILE = "manifest.json"
CONFIG_FILE = "config.yaml"
STEPS_FILE = "steps.jsonl"
LOG_FILE = "run.log"
LOCK_FILE = "run.lock"
MODEL_DIR = "model"  # final weights, config and tokenizer (from_pretrained)
TEACHERS_DIR = "teachers"  # <output_dir>/teachers/...: the teacher runs of distillation
TABLES_DIR = "tables"  # <folder>/tables/: what cmift-table writes


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


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)
