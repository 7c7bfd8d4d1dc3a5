"""manifest.json: where and with what a run ran (git commit, packages, device, host)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
import time
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from cmift.runs.files import SCHEMA_VERSION

PACKAGES = ("cmift", "torch", "transformers", "datasets", "tokenizers", "hydra-core",
            "omegaconf", "numpy", "pandas", "safetensors", "rich")
IMPORT_NAMES = {"hydra-core": "hydra"}  # where a distribution's module is named otherwise


@lru_cache(maxsize=1)  # once per process: a sweep runs the code it loaded at its start
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


@lru_cache(maxsize=1)
def package_versions() -> dict:
    """The versions of the code this process runs: an imported module's own __version__ (a
    package upgraded on disk under a running sweep leaves the loaded code as it was), else the
    installed distribution's."""
    versions = {"python": platform.python_version()}
    for name in PACKAGES:
        loaded = getattr(sys.modules.get(IMPORT_NAMES.get(name, name)), "__version__", None)
        try:
            versions[name] = loaded if isinstance(loaded, str) else metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def manifest(device: str, threads: int) -> dict:
    return {
        "schema_version": SCHEMA_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "command": sys.argv,
        "cwd": os.getcwd(),
        "git": dict(git_commit()),
        "packages": dict(package_versions()),
        "device": device,
        "torch_threads": threads,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "pid": os.getpid(),
    }
