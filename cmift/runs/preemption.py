"""Preemption on a cluster (the submitit launcher: `hydra/launcher=submitit_slurm`): submitit
signals the job (SIGUSR2, `--signal=USR2@90` on SLURM) before the scheduler takes the node, and
its handler requeues the job. cmift puts itself in front of that handler: the signal first
stops training at the last step boundary with a checkpoint (like Ctrl-C), then submitit's
handler requeues the job, and the requeued job resumes from that checkpoint."""

from __future__ import annotations

import signal
from typing import Callable, Optional


class Preempted(KeyboardInterrupt):
    """The cluster is taking the node: save at the step boundary, then requeue."""


def _raise(signum, frame) -> None:
    raise Preempted()


def take_over_requeue() -> Optional[Callable]:
    """Submitit's SIGUSR2 handler (which requeues the job) when this process is a submitit job,
    after installing one that raises Preempted in its place; None elsewhere."""
    previous = signal.getsignal(signal.SIGUSR2)
    owner = getattr(previous, "__self__", None)
    if not callable(previous) or not type(owner).__module__.startswith("submitit"):
        return None
    signal.signal(signal.SIGUSR2, _raise)
    return previous


def requeue(handler: Callable) -> None:
    """Hand the preemption to submitit: it requeues the job and exits this process."""
    handler(signal.SIGUSR2, None)
