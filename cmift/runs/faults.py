"""Fault injection at known points, for tests of what happens when things go wrong (never a
timer): `CMIFT_FAULTS="nan_loss@3"` makes the loss of the 3rd optimiser-step attempt NaN (its
last micro-batch; attempts count skipped steps too, so a fault fires once), `nan_loss@3.0`
only its first micro-batch; `nan_outputs@3` makes the model's outputs (logits and features)
NaN instead; `sigint@5`, `sigterm@5` or `sigkill@5` make the process send itself that signal
right after optimiser step 5 (and its checkpoint, if one is due); `enospc@step-*.pt#2` makes
the 2nd atomic write of a file whose name matches `step-*.pt` fail halfway with "no space left
on device" (ENOSPC); several faults are comma-separated."""

from __future__ import annotations

import errno
import fnmatch
import os
from collections import Counter
from functools import lru_cache

ENV = "CMIFT_FAULTS"
_writes: Counter = Counter()  # atomic writes so far, per enospc pattern


@lru_cache(maxsize=8)
def _parse(spec: str) -> frozenset:
    faults = set()
    for item in filter(None, (x.strip() for x in spec.split(","))):
        name, _, where = item.partition("@")
        if name == "enospc":
            pattern, _, nth = where.partition("#")
            faults.add((name, pattern, int(nth or 1)))
            continue
        step, _, micro = where.partition(".")
        faults.add((name, int(step), int(micro) if micro else -1))
    return frozenset(faults)


def write_fault(file_name: str) -> None:
    """Raise ENOSPC if an `enospc@<pattern>#<n>` fault names this write (the n-th atomic write
    of a file matching the pattern, counted in this process)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    for _, pattern, nth in (f for f in _parse(spec) if f[0] == "enospc"):
        if fnmatch.fnmatch(file_name, pattern):
            _writes[pattern] += 1
            if _writes[pattern] == nth:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def active(name: str, attempt: int, micro: int, last_micro: int) -> bool:
    """Whether fault `name` is set for micro-batch `micro` of step attempt `attempt` (1-based)."""
    spec = os.environ.get(ENV)
    if not spec:
        return False
    faults = _parse(spec)
    return (name, attempt, micro) in faults or (micro == last_micro and
                                               (name, attempt, -1) in faults)


def outputs(out, attempt: int, micro: int, last_micro: int):
    """The model's outputs, made NaN where `nan_outputs` is set."""
    if not active("nan_outputs", attempt, micro, last_micro):
        return out
    from dataclasses import replace

    nan = float("nan")
    return replace(out, logits=out.logits * nan,
                   features=None if out.features is None else out.features * nan)


def signal_after_step(step: int) -> None:
    """Send this process the signal a `sig*@step` fault names (a known interruption point)."""
    import signal

    for name in ("sigint", "sigterm", "sigkill"):
        if active(name, step, -1, -1):
            os.kill(os.getpid(), getattr(signal, name.upper()))
