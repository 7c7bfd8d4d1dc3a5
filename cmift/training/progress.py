"""Training progress: a rich bar on a terminal, one log line per log interval otherwise, and the
examples/s of the interval (evaluations and checkpoints excluded). Passes without gradients
(evaluation, an objective's pass over the training set) get their own bar below it, or one log
line each when the output is not a terminal, so a run is never silent for long."""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

log = logging.getLogger("cmift.training.loop")


class TrainProgress:
    def __init__(self, total: int):
        self.total = total
        self.bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                            MofNCompleteColumn(),
                            TextColumn("loss {task.fields[loss]}"),
                            TextColumn("{task.fields[eps]} ex/s"),
                            TimeRemainingColumn(), transient=True)
        self.bar.disable = not self.bar.console.is_terminal
        self.task = None
        self.examples = 0  # training examples since the interval started
        self.restart_interval()

    @contextmanager
    def shown(self, completed: int):
        with self.bar:
            self.task = self.bar.add_task("train", total=self.total, completed=completed,
                                          loss="-", eps="-")
            self.restart_interval()
            yield self

    def restart_interval(self) -> None:
        self.started, self.examples = time.perf_counter(), 0

    def report(self, step: int, epoch: int, loss: float) -> None:
        now = time.perf_counter()
        eps = self.examples / max(now - self.started, 1e-9)
        self.started, self.examples = now, 0
        self.bar.update(self.task, loss=f"{loss:.4f}", eps=f"{eps:.0f}")
        if self.bar.disable:
            log.info("step %d/%d epoch %d loss %.4f %.1f ex/s", step, self.total, epoch, loss,
                     eps)

    def advance(self, step: int) -> None:
        self.bar.update(self.task, completed=step)

    @contextmanager
    def pass_shown(self, label: str, total: int, plain_line: bool = True):
        """A no-grad pass over `total` examples; yields advance(n_examples). Without a bar,
        one log line (unless `plain_line` is False: evaluations log their results anyway)."""
        if self.bar.disable or self.task is None:
            if plain_line:
                log.info("%s: %d examples", label, total)
            yield lambda n: None
            return
        task = self.bar.add_task(label, total=total, loss="", eps="")
        try:
            yield lambda n: self.bar.advance(task, n)
        finally:
            self.bar.remove_task(task)
