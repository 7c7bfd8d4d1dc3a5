"""Fault injection at known points, for tests of what happens when things go wrong (never a
timer): `CMIFT_FAULTS="nan_loss@3"` makes the loss of the 3rd optimiser-step attempt NaN (its
last micro-batch; attempts count skipped steps too, so a fault fires once), `nan_loss@3.0`
only its first micro-batch; `nan_outputs@3` makes the model's outputs (logits and features)
NaN instead; `sigint@5`, `sigterm@5` or `sigkill@5` make the process send itself that signal
right after optimiser step 5 (and its checkpoint, if one is due; `sigstop@5` stops the process
there once, alive, for a test to resume with SIGCONT; `sigusr2@5` sends once the signal
submitit uses for preemption); `enospc@step-*.pt#2` makes
the 2nd atomic write of a file whose name matches `step-*.pt` fail halfway with "no space left
on device" (ENOSPC); `kill@<point>#<n>` SIGKILLs the process the n-th time it reaches a
named point: an atomic write of a file matching the glob (the new file complete in its temp
file, not yet renamed: the worst moment), `tokenized` (the tokenised-data cache saved, not yet
renamed) or `model` (the final weights saved, not yet renamed); several faults are
comma-separated."""

from __future__ import annotations

import errno
import fnmatch
import os
from collections import Counter
from functools import lru_cache

ENV = "CMIFT_FAULTS"
_sent: set = set()  # one-shot signals already sent
_writes: Counter = Counter()  # writes and points reached so far, per enospc / kill pattern


@lru_cache(maxsize=8)
def _parse(spec: str) -> frozenset:
    faults = set()
    for item in filter(None, (x.strip() for x in spec.split(","))):
        name, _, where = item.partition("@")
        if name in ("enospc", "kill"):
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
    if _reached("enospc", file_name, spec):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _reached(kind: str, name: str, spec: str) -> bool:
    hit = False
    for _, pattern, nth in (f for f in _parse(spec) if f[0] == kind):
        if fnmatch.fnmatch(name, pattern):
            _writes[(kind, pattern)] += 1
            hit = hit or _writes[(kind, pattern)] == nth
    return hit


def kill_point(name: str) -> None:
    """SIGKILL this process if a `kill@<pattern>#<n>` fault names this point (a file name, or
    `tokenized` / `model`) for the n-th time: an interruption nothing can clean up after."""
    spec = os.environ.get(ENV)
    if spec and _reached("kill", name, spec):
        import signal

        os.kill(os.getpid(), signal.SIGKILL)


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

    for name in ("sigint", "sigterm", "sigkill", "sigstop", "sigusr2"):
        if active(name, step, -1, -1) and (name, step) not in _sent:
            if name in ("sigstop", "sigusr2"):  # once: later runs of a sweep reach step N too
                _sent.add((name, step))
            os.kill(os.getpid(), getattr(signal, name.upper()))
