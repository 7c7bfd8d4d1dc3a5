"""TrainState: everything a run needs to continue exactly where it stopped, which is exactly
what a checkpoint holds (cmift/training/checkpoint.py)."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Optional

import torch

from cmift.ranks import RANKS
from cmift.training import checkpoint as ckpt
from cmift.tuning import load_trained_state, trained_state


class Stopwatch:
    """Training wall time: runs during the steps, paused for evaluation and checkpoints."""

    def __init__(self, seconds: float = 0.0):
        self.seconds, self._since = seconds, None

    def start(self) -> None:
        self._since = time.perf_counter()

    def stop(self) -> None:
        if self._since is not None:
            self.seconds += time.perf_counter() - self._since
            self._since = None

    def now(self) -> float:
        running = time.perf_counter() - self._since if self._since is not None else 0.0
        return self.seconds + running

    @contextmanager
    def paused(self):
        self.stop()
        try:
            yield
        finally:
            self.start()


def _timing() -> dict:
    # pass and eval time, and the padded tokens the training steps processed
    return {"pass_seconds": 0.0, "eval_seconds": 0.0, "eval_examples": 0, "train_tokens": 0}


@dataclass
class TrainState:
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Optional[torch.amp.GradScaler]
    objective: Any
    generator: torch.Generator  # the data order, separate from dropout's stream
    step: int = 0  # optimiser steps done
    epoch: int = 0  # the current epoch, 1-based once training starts
    position: int = 0  # micro-batches of the current epoch done (0: the epoch is not started)
    # the generator before this epoch's shuffle, and every RNG at the last step boundary
    epoch_generator: Optional[torch.Tensor] = None
    boundary_rng: dict = field(default_factory=ckpt.rng_state)
    examples: int = 0
    skipped: int = 0  # steps skipped for a non-finite loss
    clock: Stopwatch = field(default_factory=Stopwatch)
    timing: dict = field(default_factory=_timing)
    evals: list = field(default_factory=list)

    def __post_init__(self):
        if self.epoch_generator is None:
            self.epoch_generator = self.generator.get_state()

    def at_step_boundary(self, micro_batches: int) -> None:
        """An optimiser step was taken over the next `micro_batches` of the epoch."""
        self.step += 1
        self.position += micro_batches
        self.boundary_rng = ckpt.rng_state()

    def payload(self) -> dict:
        """What a checkpoint holds: plain types and tensors (loads with weights_only=True)."""
        return {"model": trained_state(self.model), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler else {},
                "objective": self.objective.state_dict(), "rng": self.boundary_rng,
                "data": {"epoch": self.epoch, "position": self.position,
                         "epoch_generator": self.epoch_generator,
                         "generator": self.generator.get_state()},
                "step": self.step, "examples": self.examples, "skipped_steps": self.skipped,
                "train_seconds": self.clock.seconds, "timing": dict(self.timing),
                "evals": self.evals,
                # data-parallel: each rank's dropout stream (a collective: every rank calls it)
                **({"rank_rng": RANKS.gather(self.boundary_rng)} if RANKS.parallel else {})}

    def restore(self, payload: dict, device) -> None:
        """Continue from a checkpoint's payload: weights, optimiser, data position, RNGs."""
        load_trained_state(self.model, payload["model"])
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        if self.scaler and payload["scaler"]:
            self.scaler.load_state_dict(payload["scaler"])
        self.objective.load_state_dict(payload["objective"])
        self.objective.to(device)
        data = payload["data"]
        self.epoch, self.position = data["epoch"], data["position"]
        self.epoch_generator = data["epoch_generator"]
        self.generator.set_state(data["generator"])
        self.step, self.examples = payload["step"], payload["examples"]
        self.skipped, self.evals = payload["skipped_steps"], list(payload["evals"])
        self.clock = Stopwatch(payload["train_seconds"])
        self.timing.update(payload["timing"])
        rng = payload["rng"]
        if RANKS.parallel and len(payload.get("rank_rng", [])) == RANKS.world:
            rng = payload["rank_rng"][RANKS.rank]
        ckpt.set_rng_state(rng)
        self.boundary_rng = rng
