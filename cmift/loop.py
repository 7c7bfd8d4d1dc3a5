"""The training loop shared by every objective, and evaluation."""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from cmift import checkpoint as ckpt
from cmift.config import choice
from cmift.data import PadCollator, Split, eval_batches, train_batches
from cmift.metrics import cmi_diagnostics, task_metrics
from cmift.models import FeatureTap
from cmift.objectives import Objective, Outputs
from cmift.tasks import GlueTask, split_suffix

log = logging.getLogger(__name__)
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


# ----- device and precision -------------------------------------------------------------------
@dataclass
class Device:
    device: torch.device
    amp_dtype: Optional[torch.dtype]  # autocast dtype, None = fp32

    def autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"
        amp = str(self.amp_dtype).replace("torch.", "") if self.amp_dtype else "fp32"
        return f"{name} ({amp})"


def pick_device(precision: str) -> Device:
    if torch.cuda.is_available():
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        bf16_ok = torch.cuda.is_bf16_supported()
        dtype = {"auto": torch.bfloat16 if bf16_ok else torch.float16, "fp32": None,
                 "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        return Device(torch.device("cuda"), dtype)
    dtype = {"bf16": torch.bfloat16}.get(precision)  # fp16 autocast on CPU is not worth it
    return Device(torch.device("cpu"), dtype)


def pin_batch(batch: dict) -> dict:
    """Page-locked host memory, so the copy to the GPU can overlap compute (non_blocking)."""
    return {k: v.pin_memory() for k, v in batch.items()}


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def model_kwargs(model) -> tuple[str, ...]:
    """The inputs this model's forward accepts (DistilBERT has no token_type_ids)."""
    params = inspect.signature(model.forward).parameters
    return tuple(k for k in MODEL_INPUTS if k in params)


class Forward:
    """model(batch) -> Outputs: picks the inputs the model takes, runs under the device's
    autocast, and adds the head's feature vector when the objective asks for it."""

    def __init__(self, model, device: Device, features: bool):
        self.model, self.device = model, device
        self.inputs = model_kwargs(model)
        self.tap = FeatureTap(model) if features else None

    def __call__(self, batch: dict) -> Outputs:
        with self.device.autocast():
            logits = self.model(**{k: batch[k] for k in self.inputs if k in batch}).logits
        return Outputs(logits=logits, features=self.tap.value if self.tap else None)


# ----- optimiser --------------------------------------------------------------------------------
def make_optimizer(model, t, device: Device) -> torch.optim.Optimizer:
    """AdamW; biases and LayerNorm weights (1-d parameters) are not decayed, as in HF Trainer."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": t.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel updates every parameter in one pass (on MiniLM-L6 on a CPU: ~13 ms a step
    # against ~70-150 ms for the foreach one); HF Trainer uses it by default too.
    fused = t.fused_adamw and device.device.type in ("cuda", "cpu")
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), eps=t.adam_eps,
                             fused=fused)


def linear_schedule(optimizer, warmup: int, total: int):
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ----- evaluation -------------------------------------------------------------------------------
@dataclass
class EvalResult:
    metrics: dict  # flat: task metrics, loss, cmi, gamma, ncmi (suffixed _m/_mm on MNLI)
    predictions: dict = field(default_factory=dict)  # split -> (idx, labels, preds, probs)


def eval_passes(forward: Forward, split: Split, collator: PadCollator, batch_size: int,
                limit: Optional[int] = None, inference: bool = False
                ) -> Iterator[tuple[Outputs, torch.Tensor, list]]:
    """(Outputs, labels, indices) over the first `limit` examples of `split` in eval mode and
    without gradients; batches are length-sorted. Dropout is off, so no random numbers are drawn:
    these passes never change a run's random stream.

    `inference=True` runs under torch.inference_mode (no autograd bookkeeping at all), for
    outputs that only leave as NumPy; objectives' passes keep no_grad, because their state
    (centroids) is later used by the loss and inference tensors cannot enter autograd."""
    model = forward.model
    was_training = model.training
    model.eval()
    grad_off = torch.inference_mode if inference else torch.no_grad
    try:
        for indices in eval_batches(split.lengths[:limit], batch_size):
            batch = to_device(collator(indices), forward.device.device)
            # grad mode is per thread: hold it only around the forward, never across a yield
            with grad_off():
                outputs = forward(batch)
            yield outputs, batch["labels"], indices
    finally:
        model.train(was_training)


def predict(forward: Forward, split: Split, collator: PadCollator, batch_size: int) -> np.ndarray:
    """Logits for every example of `split`, in the split's order (under inference mode)."""
    out = None
    for outputs, _, indices in eval_passes(forward, split, collator, batch_size, inference=True):
        logits = outputs.logits.float()
        if out is None:
            out = np.empty((len(split), logits.shape[-1]), dtype=np.float32)
        out[indices] = logits.cpu().numpy()
    return out


def evaluate(forward: Forward, task: GlueTask, splits: dict[str, Split], collators: dict,
             batch_size: int) -> EvalResult:
    result = EvalResult(metrics={})
    for name, split in splits.items():
        logits = predict(forward, split, collators[name], batch_size)
        labels = split.labels
        sfx = split_suffix(task, name)
        if task.is_regression:
            preds = logits[:, 0]
            m = task_metrics(task.metrics, preds, labels)
            m["loss"] = float(np.mean((preds - labels) ** 2))
            probs = None
        else:
            t = torch.from_numpy(logits)
            probs = torch.softmax(t, -1).numpy()
            preds = logits.argmax(-1)
            m = task_metrics(task.metrics, preds, labels)
            m["loss"] = float(torch.nn.functional.cross_entropy(t, torch.from_numpy(labels)))
            m.update(cmi_diagnostics(probs, labels))
        result.metrics.update({f"{k}{sfx}": v for k, v in m.items()})
        result.predictions[name] = (split.idx, labels, preds, probs)
    scores = [result.metrics[f"{k}{split_suffix(task, s)}"] for s in splits for k in task.metrics]
    result.metrics["score"] = float(np.mean(scores))  # GLUE's per-task score: mean of its metrics
    return result


# ----- training ---------------------------------------------------------------------------------
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
    forward: "Forward"  # the trained model behind the forward used in training
    pad_id: int
    skipped_steps: int = 0


def plan_steps(n_train: int, t) -> tuple[int, int]:
    """(optimiser steps per epoch, total optimiser steps)."""
    per_epoch = math.ceil(math.ceil(n_train / t.batch_size) / t.grad_accum)
    total = t.max_steps if t.max_steps else per_epoch * t.epochs
    return per_epoch, total


class StepLog:
    """Per-step loss terms, kept on the device and written as JSON lines at log intervals, so
    the hot loop never waits for the device."""

    def __init__(self, path: Path):
        self.path = path
        self.pending: list[tuple[int, int, dict, float, float]] = []

    def add(self, step: int, epoch: int, terms: dict[str, torch.Tensor], lr: float,
            seconds: float) -> None:
        """`seconds`: training time so far (host clock; on a GPU, when the step was queued)."""
        self.pending.append((step, epoch, {k: v.detach() for k, v in terms.items()}, lr,
                             round(seconds, 4)))

    def flush(self) -> dict[str, float]:
        """Write pending steps; return the mean of each term over them."""
        if not self.pending:
            return {}
        names = list(self.pending[0][2])
        values = torch.stack([torch.stack([t[k].float() for k in names])
                              for _, _, t, _, _ in self.pending]).cpu().tolist()
        with open(self.path, "a") as f:
            for (step, epoch, _, lr, seconds), row in zip(self.pending, values):
                f.write(json.dumps({"step": step, "epoch": epoch, "lr": lr, "seconds": seconds,
                                    **dict(zip(names, row))}) + "\n")
        means = dict(zip(names, np.mean(values, axis=0).tolist()))
        self.pending.clear()
        return means

    def truncate_after(self, step: int) -> None:
        """Drop logged steps after `step` (a resumed run logs them again)."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(f"{line}\n" for line in kept))


class NonFiniteLoss(RuntimeError):
    """A NaN or infinite loss under train.nan_policy=fail."""


def fit(model, objective: Objective, task: GlueTask, train: Split, dev: dict[str, Split],
        pad_id: int, cfg, device: Device, run_dir: Path,
        on_eval: Callable[[list], None]) -> FitResult:
    """Train with `objective`, evaluating on `dev`; resumes from the run's latest checkpoint."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
    )

    t = cfg.train
    model.to(device.device)
    model.train()
    forward = Forward(model, device, features=objective.needs_features)
    train_collate = PadCollator(train, pad_id, task.is_regression)
    dev_collate = {k: PadCollator(s, pad_id, task.is_regression) for k, s in dev.items()}
    per_epoch, total = plan_steps(len(train), t)
    train_lengths = train.lengths
    optimizer = make_optimizer(model, t, device)
    scheduler = linear_schedule(optimizer, int(t.warmup_ratio * total), total)
    scaler = torch.amp.GradScaler("cuda") if device.amp_dtype == torch.float16 else None
    generator = torch.Generator().manual_seed(cfg.seed)  # the data order, separate from dropout
    steps_log = StepLog(run_dir / "steps.jsonl")
    skip_nan = choice(t.nan_policy) == "skip"

    evals: list[dict] = []
    step, epoch, examples, train_seconds, skipped = 0, 0, 0, 0.0, 0
    # pass and eval time, and the padded tokens the training steps processed
    timing = {"pass_seconds": 0.0, "eval_seconds": 0.0, "eval_examples": 0, "train_tokens": 0}
    last: Optional[EvalResult] = None
    # Where the data stream is: the generator before this epoch's shuffle, the batch position,
    # and the RNG state at the last optimiser-step boundary (what a Ctrl-C checkpoint saves).
    epoch_gen, position, boundary_rng = generator.get_state(), 0, ckpt.rng_state()

    def payload() -> dict:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler else {},
                "objective": objective.state_dict(), "rng": boundary_rng,
                "data": {"epoch": epoch, "position": position, "epoch_generator": epoch_gen,
                         "generator": generator.get_state()},
                "step": step, "examples": examples, "train_seconds": train_seconds,
                "timing": dict(timing),
                "skipped_steps": skipped, "evals": evals}

    def checkpoint() -> None:
        check_finite(steps_log.flush())
        path = ckpt.save(run_dir, step, payload(), t.keep_checkpoints)
        log.info("checkpoint %s", path.name)

    def check_finite(means: dict) -> None:
        if means and not all(math.isfinite(v) for v in means.values()):
            raise NonFiniteLoss(f"non-finite loss by step {step}: {means}; the last good "
                                f"checkpoint is kept in {run_dir / ckpt.CKPT_DIR}")

    def run_eval() -> None:
        nonlocal last
        start = time.perf_counter()
        last = evaluate(forward, task, dev, dev_collate, t.eval_batch_size)
        timing["eval_seconds"] += time.perf_counter() - start
        timing["eval_examples"] += sum(len(s) for s in dev.values())
        evals.append({"step": step, "epoch": round(step / per_epoch, 4), "dev": last.metrics})
        shown = ", ".join(f"{k} {v:.4f}" for k, v in last.metrics.items())
        log.info("eval step %d (epoch %.2f): %s", step, step / per_epoch, shown)
        on_eval(evals)

    def train_passes(limit: Optional[int]):
        for outputs, labels, _ in eval_passes(forward, train, train_collate, t.eval_batch_size,
                                              limit):
            yield outputs, labels

    def objective_passes(hook: Callable, *args) -> None:
        """Run an objective hook that makes no-grad passes; its time counts as training."""
        nonlocal train_seconds
        start = time.perf_counter()
        hook(*args, train_passes)
        seconds = time.perf_counter() - start
        train_seconds += seconds
        timing["pass_seconds"] += seconds

    state = ckpt.latest(run_dir)
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler and state["scaler"]:
            scaler.load_state_dict(state["scaler"])
        objective.load_state_dict(state["objective"])
        objective.to(device.device)
        d = state["data"]
        epoch, position, epoch_gen = d["epoch"], d["position"], d["epoch_generator"]
        generator.set_state(d["generator"])
        step, examples, skipped = state["step"], state["examples"], state["skipped_steps"]
        train_seconds, evals = state["train_seconds"], list(state["evals"])
        timing.update(state.get("timing", {}))
        ckpt.set_rng_state(state["rng"])
        boundary_rng = state["rng"]
        steps_log.truncate_after(step)
        log.info("resumed from %s: step %d, epoch %d, batch %d", state["path"], step, epoch,
                 position)
    else:
        steps_log.truncate_after(0)
        objective_passes(objective.setup)
    log.info("training: %d examples, %d steps (%d per epoch), batch %d x accum %d, lr %g",
             len(train), total, per_epoch, t.batch_size, t.grad_accum, t.lr)

    progress = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("loss {task.fields[loss]}"),
                        TextColumn("{task.fields[eps]} ex/s"),
                        TimeRemainingColumn(), transient=True)
    progress.disable = not progress.console.is_terminal
    try:
        with progress:
            bar = progress.add_task("train", total=total, completed=step, loss="-", eps="-")
            interval_start, interval_examples = time.perf_counter(), 0
            while step < total:
                if position == 0:  # a new epoch (else: resuming inside one)
                    epoch += 1
                    epoch_gen = generator.get_state()
                    batches = train_batches(train_lengths, t.batch_size, generator,
                                            t.group_by_length)
                    objective_passes(objective.on_epoch_start, epoch)
                else:
                    after = generator.get_state()
                    generator.set_state(epoch_gen)
                    batches = train_batches(train_lengths, t.batch_size, generator,
                                            t.group_by_length)
                    generator.set_state(after)
                # A plain generator, not a DataLoader: a DataLoader iterator draws a seed from the
                # global RNG when created, which would shift dropout masks on resume.
                pin = device.device.type == "cuda"
                loader = (pin_batch(train_collate(b)) if pin else train_collate(b)
                          for b in batches[position:])
                epoch_start = time.perf_counter()
                for i, cpu_batch in enumerate(loader, start=position):
                    batch = to_device(cpu_batch, device.device)
                    terms = objective(forward(batch), batch)
                    loss = terms["loss"] / t.grad_accum
                    (scaler.scale(loss) if scaler else loss).backward()
                    examples += len(cpu_batch["labels"])
                    timing["train_tokens"] += cpu_batch["input_ids"].numel()
                    interval_examples += len(cpu_batch["labels"])
                    if (i + 1) % t.grad_accum and i + 1 != len(batches):
                        continue
                    if skip_nan and not torch.isfinite(terms["loss"]).item():  # opted-in sync
                        optimizer.zero_grad(set_to_none=True)
                        skipped += 1
                        log.warning("step %d: non-finite loss, batch skipped (%d so far)",
                                    step + 1, skipped)
                        position = i + 1
                        continue
                    if scaler:
                        scaler.unscale_(optimizer)
                    if t.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                    lr = scheduler.get_last_lr()[0]
                    if scaler:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                    objective.after_step()
                    step += 1
                    position, boundary_rng = i + 1, ckpt.rng_state()
                    steps_log.add(step, epoch, terms, lr,
                                  train_seconds + time.perf_counter() - epoch_start)
                    if step % t.log_every == 0 or step == total:
                        means = steps_log.flush()  # the only host sync in the loop
                        check_finite(means)
                        now = time.perf_counter()
                        eps = interval_examples / max(now - interval_start, 1e-9)
                        interval_start, interval_examples = now, 0
                        progress.update(bar, loss=f"{means['loss']:.4f}", eps=f"{eps:.0f}")
                        if progress.disable:
                            log.info("step %d/%d epoch %d loss %.4f %.1f ex/s", step, total,
                                     epoch, means["loss"], eps)
                    progress.update(bar, completed=step)
                    if step >= total:
                        break
                    evaluate_now = bool(t.eval_every) and step % t.eval_every == 0
                    if evaluate_now or (t.save_every and step % t.save_every == 0):
                        train_seconds += time.perf_counter() - epoch_start
                        if evaluate_now:
                            run_eval()
                        checkpoint()
                        epoch_start = interval_start = time.perf_counter()
                        interval_examples = 0
                train_seconds += time.perf_counter() - epoch_start
                check_finite(steps_log.flush())
                position = 0  # the epoch is done (or so is training)
                if step >= total or not t.eval_every:
                    run_eval()
                    interval_start, interval_examples = time.perf_counter(), 0
                if step < total:
                    checkpoint()
    except KeyboardInterrupt:
        # Ctrl-C: save the last step boundary, so that running the command again resumes.
        steps_log.flush()
        ckpt.save(run_dir, step, payload(), t.keep_checkpoints)
        log.warning("interrupted at step %d; checkpoint saved, run the command again to resume",
                    step)
        raise
    if last is None:  # resumed after the last evaluation had been checkpointed
        last = evaluate(forward, task, dev, dev_collate, t.eval_batch_size)
    if skipped:
        log.warning("%d steps skipped for non-finite loss", skipped)
    return FitResult(evals=evals, last=last, steps=step, epochs_done=step / per_epoch,
                     train_seconds=train_seconds, train_examples=examples, forward=forward,
                     **timing,
                     pad_id=pad_id, skipped_steps=skipped)
