"""The training loop shared by every objective.

Read top to bottom: `fit` starts (or resumes) a run and runs epochs; an epoch is a series of
`train_step`s (one optimiser step over `train.grad_accum` micro-batches each), with evaluation
and checkpoints scheduled between steps; the state lives in a TrainState.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import torch

from cmift import faults
from cmift.config.spec import choice
from cmift.data.tasks import GlueTask
from cmift.data.tokenized import PadCollator, Split, train_batches
from cmift.loggers.base import Logger
from cmift.objectives import Objective
from cmift.ranks import RANKS, wrap
from cmift.runs.files import STEPS_FILE
from cmift.runs.scores import should_stop
from cmift.training import checkpoint as ckpt
from cmift.training.best import BestWeights
from cmift.training.device import Device, Forward, pin_batch, to_device
from cmift.training.evaluate import EvalResult, eval_passes, evaluate, sample_examples
from cmift.training.optim import make_optimizer, make_scheduler, plan_steps
from cmift.training.progress import TrainProgress
from cmift.training.state import TrainState
from cmift.training.steplog import StepLog

log = logging.getLogger(__name__)


class NonFiniteLoss(RuntimeError):
    """A NaN or infinite loss under train.nan_policy=fail."""


@dataclass
class FitResult:
    evals: list
    last: EvalResult
    steps: int
    epochs_done: float
    train_seconds: float  # training wall time: steps plus the objective's passes
    pass_seconds: float  # of which the objective's no-grad passes (CMI centroids)
    train_examples: int
    eval_seconds: float
    eval_examples: int
    train_tokens: int  # padded: batch width x batch size, summed over steps
    forward: Forward  # the trained model behind the forward used in training
    pad_id: int
    skipped_steps: int = 0
    decode: Optional[Callable] = None  # the last evaluation's decoder (None: the logits)
    kept_step: Optional[int] = None  # train.keep_best: the step whose weights the model holds
    stopped_early: bool = False  # train.early_stopping_patience ended the run before its steps


def fit(model, objective: Objective, task: GlueTask, train: Split, dev: dict[str, Split],
        pad_id: int, cfg, device: Device, run_dir: Path, on_eval: Callable[[list], None],
        selection: Optional[Split] = None, logger: Optional[Logger] = None) -> FitResult:
    """Train with `objective`, evaluating on `dev` (and on the `selection` split carved from
    train, when there is one); resumes from the run's latest checkpoint."""
    return Loop(model, objective, task, train, dev, pad_id, cfg, device, run_dir, on_eval,
                selection, logger).fit()


class Loop:
    def __init__(self, model, objective, task, train, dev, pad_id, cfg, device, run_dir,
                 on_eval, selection=None, logger=None):
        self.cfg, self.t, self.task, self.device = cfg, cfg.train, task, device
        self.train, self.dev, self.pad_id, self.run_dir = train, dev, pad_id, run_dir
        self.on_eval = on_eval
        model.to(device.device)
        model.train()
        self.forward = Forward(model, device, features=objective.needs_features)
        self.forward.model = wrap(model)  # DDP on a data-parallel run (distributed.py)
        self.setup_data(selection)
        self.per_epoch, self.total = self.plan()
        optimizer = make_optimizer(model, self.t, device)
        self.state = TrainState(
            model=model, objective=objective, optimizer=optimizer,
            scheduler=make_scheduler(optimizer, self.t, self.total),
            scaler=torch.amp.GradScaler("cuda") if device.amp_dtype == torch.float16 else None,
            generator=torch.Generator().manual_seed(cfg.seed))
        self.logger = logger or Logger()
        self.steps_log = StepLog(run_dir / STEPS_FILE if RANKS.main else None,
                                 self.logger.log_steps)
        self.skip_nan = choice(self.t.nan_policy) == "skip"
        self.consecutive_skips = 0
        self.progress = TrainProgress(self.total)
        self.last: Optional[EvalResult] = None
        self.best = BestWeights(run_dir, self.t.keep_best)
        self.saved_step: Optional[int] = None  # the step of this process's last checkpoint

    # ----- the data (a multi-task run replaces these: multitask.py) --------------------------
    def setup_data(self, selection: Optional[Split]) -> None:
        regression = self.task.is_regression
        self.collate = PadCollator(self.train, self.pad_id, regression)
        self.dev_collate = {k: PadCollator(s, self.pad_id, regression)
                            for k, s in self.dev.items()}
        self.selection = {"selection": selection} if selection is not None else {}
        self.selection_collate = {k: PadCollator(s, self.pad_id, regression)
                                  for k, s in self.selection.items()}

    def plan(self) -> tuple[int, int]:
        return plan_steps(len(self.train), self.t)

    def draw_batches(self) -> list[list[int]]:
        """One epoch's batches, drawn from the run's data-order generator."""
        return train_batches(self.train.lengths, self.t.batch_size, self.state.generator,
                             self.t.group_by_length)

    def eval_examples(self) -> int:
        return sum(len(split) for split in [*self.dev.values(), *self.selection.values()])

    # ----- the run ------------------------------------------------------------------------
    def fit(self) -> FitResult:
        self.start()
        s, t = self.state, self.t
        log.info("training: %d examples, %d steps (%d per epoch), batch %d x accum %d, lr %g",
                 len(self.train), self.total, self.per_epoch, t.batch_size, t.grad_accum, t.lr)
        try:
            with self.progress.shown(s.step):
                while s.step < self.total and not self.stopping():
                    self.run_epoch()
        except KeyboardInterrupt:
            # Ctrl-C: save the last step boundary, so that running the command again resumes.
            # Data-parallel ranks may be stopped at different points: the last checkpoint
            # written by all of them stands.
            self.steps_log.flush()
            if not RANKS.parallel:
                ckpt.save(self.run_dir, s.step, s.payload(), t.keep_checkpoints)
            log.warning("interrupted at step %d; %s, run the command again to resume", s.step,
                        "the last checkpoint stands" if RANKS.parallel else "checkpoint saved")
            raise
        if self.stopping():
            log.info("early stopping at step %d: no better %s score in the last %d "
                     "evaluations", s.step, self.chosen_on(), t.early_stopping_patience)
        kept = self.keep_best() if t.keep_best else None
        if self.last is None:  # resumed after the last evaluation had been checkpointed
            self.last, _ = self.evaluate_dev()
        if s.skipped:
            log.warning("%d steps skipped for non-finite loss", s.skipped)
        return self.result(kept)

    def stopping(self) -> bool:
        return should_stop(self.state.evals, self.t.early_stopping_patience)

    def chosen_on(self) -> str:
        return "selection-split" if self.selection else "dev"

    def keep_best(self) -> int:
        """Load the best evaluation's weights (train.keep_best); the dev predictions and
        everything saved after training then come from them."""
        s = self.state
        best = self.best.restore(s.evals, s.model)
        if best["step"] != s.evals[-1]["step"]:
            self.last = None  # evaluated again below, with the weights now loaded
        log.info("keeping the weights of step %d (epoch %.2f), the best %s score of %d "
                 "evaluations", best["step"], best["epoch"], self.chosen_on(), len(s.evals))
        return best["step"]

    def start(self) -> None:
        """Resume from the latest readable checkpoint, or initialise the objective's state."""
        payload = ckpt.latest(self.run_dir)
        self.logger.start(payload["step"] if payload else 0)
        if payload is None:
            self.steps_log.truncate_after(0)
            self.objective_passes(self.state.objective.setup)
            return
        s = self.state
        s.restore(payload, self.device.device)
        self.on_eval(s.evals)  # the record holds the evaluations the checkpoint had
        self.steps_log.truncate_after(s.step)
        log.info("resumed from %s: step %d, epoch %d, batch %d", payload["path"], s.step,
                 s.epoch, s.position)

    def run_epoch(self) -> None:
        s = self.state
        batches = self.epoch_batches()
        accum = self.t.grad_accum
        groups = [batches[i:i + accum] for i in range(s.position, len(batches), accum)]
        s.clock.start()
        for group in groups:
            stepped = self.train_step(group)
            if stepped and self.after_step(*stepped):
                break
        s.clock.stop()
        self.check_finite(self.steps_log.flush())
        s.position = 0  # the epoch is done (or so is training)
        evaluated = bool(s.evals) and s.evals[-1]["step"] == s.step  # an early stop's eval
        if (s.step >= self.total or not self.t.eval_every) and not evaluated:
            self.run_eval()
        if s.step < self.total:
            self.checkpoint()

    def epoch_batches(self) -> list[list[int]]:
        """This epoch's batches: drawn anew at an epoch's start, or, when resuming inside an
        epoch, drawn again from the generator state saved before its shuffle."""
        s = self.state
        if s.position == 0:
            s.epoch += 1
            s.epoch_generator = s.generator.get_state()
            batches = self.draw_batches()
            self.objective_passes(s.objective.on_epoch_start, s.epoch)
            return batches
        after = s.generator.get_state()
        s.generator.set_state(s.epoch_generator)
        batches = self.draw_batches()
        s.generator.set_state(after)
        return batches

    # ----- one optimiser step ----------------------------------------------------------------
    def train_step(self, group: list[list[int]]) -> Optional[tuple[dict, float]]:
        """Forward and backward over the micro-batches of `group`, then one optimiser step.
        Returns the step's loss terms (the mean over its micro-batches) and learning rate, or
        None when the step was skipped for a non-finite loss (train.nan_policy=skip)."""
        s, t = self.state, self.t
        terms: dict = {}
        for micro, indices in enumerate(group):
            share, whole = 1.0, len(indices)  # examples in the (global) micro-batch
            if RANKS.parallel:  # this rank's part of the global batch, weighted by its size
                mine = RANKS.shard(indices)
                share = len(mine) / len(indices)
                indices = mine or indices[:1]  # an empty shard still joins DDP's all-reduce
            # A plain generator, not a DataLoader: a DataLoader iterator draws a seed from the
            # global RNG when created, which would shift dropout masks on resume.
            cpu_batch = self.collate(indices)
            if self.device.device.type == "cuda":
                cpu_batch = pin_batch(cpu_batch)
            batch = to_device(cpu_batch, self.device.device)
            attempt = s.step + s.skipped + 1
            outputs = faults.outputs(self.forward(batch), attempt, micro, len(group) - 1)
            batch_terms = s.objective(outputs, batch)
            if faults.active("nan_loss", attempt, micro, len(group) - 1):
                batch_terms["loss"] = batch_terms["loss"] * float("nan")
            loss = batch_terms["loss"] / t.grad_accum
            if RANKS.parallel:  # DDP averages over ranks: share x ranks makes it the batch mean
                loss = loss * (share * RANKS.world)
                batch_terms = {k: v.detach() * share for k, v in batch_terms.items()}
            (s.scaler.scale(loss) if s.scaler else loss).backward()
            for k, v in batch_terms.items():  # every micro-batch counts, not just the last
                terms[k] = terms.get(k, 0) + v.detach() / len(group)
            s.examples += whole
            s.timing["train_tokens"] += cpu_batch["input_ids"].numel()  # this rank's
            self.progress.examples += whole
        if RANKS.parallel:  # the global batch's terms on every rank (logged by rank 0)
            names = sorted(terms)
            total = RANKS.sum_(torch.stack([terms[k].float() for k in names]))
            terms = dict(zip(names, total))
        if self.skip_nan and not torch.isfinite(terms["loss"]).item():  # opted-in sync
            self.skip_step(len(group))
            return None
        self.consecutive_skips = 0
        lr = self.optimizer_step()
        s.objective.after_step()
        s.at_step_boundary(len(group))
        return terms, lr

    def skip_step(self, micro_batches: int) -> None:
        """Drop a step whose loss is not finite: no update, no trace in the objective's state;
        too many in a row (a model gone NaN) stop the run."""
        s = self.state
        s.optimizer.zero_grad(set_to_none=True)
        s.objective.discard_step()
        s.skipped += 1
        s.position += micro_batches
        self.consecutive_skips += 1
        log.warning("step %d: non-finite loss, batch skipped (%d so far)", s.step + 1, s.skipped)
        if self.consecutive_skips >= self.t.max_consecutive_skips:
            raise NonFiniteLoss(
                f"{self.consecutive_skips} consecutive steps had a non-finite loss (the last "
                f"at step {s.step + 1}; train.max_consecutive_skips="
                f"{self.t.max_consecutive_skips}); the last good checkpoint is kept in "
                f"{self.run_dir / ckpt.CKPT_DIR}")

    def optimizer_step(self) -> float:
        """Unscale, clip, step and schedule; returns the learning rate the step used."""
        s = self.state
        if s.scaler:
            s.scaler.unscale_(s.optimizer)
        if self.t.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(s.model.parameters(), self.t.max_grad_norm)
        lr = s.scheduler.get_last_lr()[0]
        if s.scaler:
            s.scaler.step(s.optimizer)
            s.scaler.update()
        else:
            s.optimizer.step()
        s.scheduler.step()
        s.optimizer.zero_grad(set_to_none=True)
        return lr

    def after_step(self, terms: dict, lr: float) -> bool:
        """Log the step, then evaluate and checkpoint when due; True when training is done."""
        s, t = self.state, self.t
        self.steps_log.add(s.step, s.epoch, terms, lr, s.clock.now())
        if s.step % t.log_every == 0 or s.step == self.total:
            means = self.steps_log.flush()  # the only host sync in the loop
            self.check_finite(means)
            self.progress.report(s.step, s.epoch, means["loss"])
        self.progress.advance(s.step)
        if s.step >= self.total:
            return True
        evaluate_now = bool(t.eval_every) and s.step % t.eval_every == 0
        if evaluate_now or (t.save_every and s.step % t.save_every == 0):
            with s.clock.paused():
                if evaluate_now:
                    self.run_eval()
                self.checkpoint()
        faults.signal_after_step(s.step)
        return self.stopping()

    # ----- evaluation, checkpoints, the objective's passes ------------------------------------
    def evaluate_dev(self) -> tuple[EvalResult, Optional[dict]]:
        """Dev metrics, and the selection split's metrics (or None); an objective that predicts
        without the head (ncmi's centroid decoding) first fits its decoder to the training set
        (timed as evaluation)."""
        decode = self.decode = self.state.objective.decoder(self.train_passes)
        dev = evaluate(self.forward, self.task, self.dev, self.dev_collate,
                       self.t.eval_batch_size, decode, self.progress.pass_shown)
        if not self.selection:
            return dev, None
        return dev, evaluate(self.forward, self.task, self.selection, self.selection_collate,
                             self.t.eval_batch_size, decode, self.progress.pass_shown).metrics

    def run_eval(self) -> None:
        s = self.state
        self.check_finite(self.steps_log.flush())  # loggers get the steps before the eval
        start = time.perf_counter()
        self.last, selection = self.evaluate_dev()
        s.timing["eval_seconds"] += time.perf_counter() - start
        s.timing["eval_examples"] += self.eval_examples()
        entry = {"step": s.step, "epoch": round(s.step / self.per_epoch, 4),
                 "dev": self.last.metrics}
        if selection is not None:
            entry["selection"] = selection
        s.evals.append(entry)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in self.last.metrics.items())
        log.info("eval step %d (epoch %.2f): %s", s.step, s.step / self.per_epoch, shown)
        if selection is not None:
            log.info("selection split: score %.4f", selection["score"])
        self.best.after_eval(s.evals, s.model)
        self.logger.log_eval(entry)
        self.on_eval(s.evals)
        self.progress.restart_interval()

    def checkpoint(self) -> None:
        if self.saved_step == self.state.step:  # an evaluation at an epoch's last step
            return
        self.saved_step = self.state.step
        self.check_finite(self.steps_log.flush())
        payload = self.state.payload()  # on every rank: it gathers their random streams
        if RANKS.main:
            path = ckpt.save(self.run_dir, self.state.step, payload, self.t.keep_checkpoints)
            log.info("checkpoint %s", path.name)
        self.progress.restart_interval()

    def check_finite(self, means: dict) -> None:
        """The loss only: the other terms are diagnostics (a term weighted 0 may be NaN)."""
        if means and not math.isfinite(means["loss"]):
            raise NonFiniteLoss(f"non-finite loss by step {self.state.step}: {means}; the last "
                                f"good checkpoint is kept in {self.run_dir / ckpt.CKPT_DIR}")

    def objective_passes(self, hook: Callable, *args) -> None:
        """Run an objective hook that makes no-grad passes over the training set; its time
        counts as training time."""
        start = time.perf_counter()
        hook(*args, self.train_passes)
        seconds = time.perf_counter() - start
        self.state.clock.seconds += seconds
        self.state.timing["pass_seconds"] += seconds

    def train_passes(self, limit: Optional[int], train_mode: bool = False):
        """The objective's no-grad passes over `limit` training examples (a sample seeded by
        the run's seed, the same in every pass; all of them when None)."""
        yield from self.passes_over(self.train, self.collate, "train", limit, train_mode,
                                    self.cfg.seed)

    def passes_over(self, split: Split, collate, name: str, limit: Optional[int],
                    train_mode: bool, seed):
        examples = sample_examples(len(split), limit, seed)
        total = len(split) if examples is None else len(examples)
        with self.progress.pass_shown(f"objective pass over {name}", total) as advance:
            # sharded on a data-parallel run: the objective combines the ranks (centroids.py)
            for outputs, labels, _ in eval_passes(self.forward, split, collate,
                                                  self.t.eval_batch_size, examples,
                                                  train_mode=train_mode, progress=advance,
                                                  shard=True):
                yield outputs, labels

    def result(self, kept_step: Optional[int] = None) -> FitResult:
        s = self.state
        return FitResult(evals=s.evals, last=self.last, steps=s.step, kept_step=kept_step,
                         stopped_early=s.step < self.total,
                         epochs_done=s.step / self.per_epoch, train_seconds=s.clock.seconds,
                         train_examples=s.examples, forward=self.forward, pad_id=self.pad_id,
                         skipped_steps=s.skipped, decode=getattr(self, "decode", None),
                         **s.timing)
