"""Multi-task training (mixture != none): one shared encoder, a head per task, each batch from
one task drawn from the mixture p.

The loop is the single-task loop (loop.py) with its data hooks replaced: every task's examples
live in one global index space (task k's example i is offset_k + i), an epoch is as many
batches as the tasks' training sets make together, and each batch's task is drawn from p with
the run's data-order generator, so a resumed run redraws the same batches. The objective is
built once per task (its own class centroids for min_cmi) and routed by the batch's task. Each
task is evaluated on its own dev split with its own metrics ("<task>/<metric>"); `score` is
their mean, the GLUE average.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from cmift.data.tasks import TASKS, GlueTask
from cmift.data.tokenized import PadCollator, Split, train_batches
from cmift.mixtures.rules import proportions
from cmift.objectives import Objective, Outputs
from cmift.training.evaluate import EvalResult, evaluate
from cmift.training.loop import Loop
from cmift.training.seed import seed_everything

log = logging.getLogger("cmift")


@dataclass
class TaskData:
    name: str
    task: GlueTask
    train: Split
    dev: dict[str, Split]
    selection: Optional[Split]


class TaskCollator(PadCollator):
    """Padding as PadCollator, and the batch's task index (the model routes by it)."""

    def __init__(self, split: Split, pad_id: int, regression: bool, task_index: int):
        super().__init__(split, pad_id, regression)
        self.task_index = task_index

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = super().__call__(indices)
        batch["task"] = torch.tensor(self.task_index, dtype=torch.long)
        return batch


class MixtureTrain:
    """The tasks' training sets as one index space (what the loop counts and draws from)."""

    def __init__(self, parts: list[TaskData]):
        self.sizes = [len(d.train) for d in parts]
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def task_of(self, index: int) -> int:
        return int(np.searchsorted(self.offsets, index, side="right") - 1)


def mixture_batches(parts: list[TaskData], train: MixtureTrain, p: np.ndarray, n_batches: int,
                    batch_size: int, generator: torch.Generator,
                    group_by_length: bool) -> list[list[int]]:
    """`n_batches` batches of global indices: each batch's task drawn from p, then the task's
    next batch from its own shuffled epochs (a new shuffle when one runs out); every draw comes
    from `generator`, in order."""
    tasks = torch.multinomial(torch.as_tensor(p, dtype=torch.float64), n_batches,
                              replacement=True, generator=generator).tolist()
    queues: list[list[list[int]]] = [[] for _ in parts]
    batches = []
    for k in tasks:
        if not queues[k]:
            queues[k] = train_batches(parts[k].train.lengths, batch_size, generator,
                                      group_by_length)[::-1]
        offset = int(train.offsets[k])
        batches.append([offset + i for i in queues[k].pop()])
    return batches


class TaskRouted(Objective):
    """One objective per task, each called on its own task's batches."""

    def __init__(self, parts: list[Objective]):
        self.parts = parts
        self.needs_features = any(o.needs_features for o in parts)

    def __call__(self, out: Outputs, batch: dict) -> dict:
        return self.parts[int(batch["task"])](out, batch)

    def setup(self, passes) -> None:
        for k, part in enumerate(self.parts):
            part.setup(partial(passes, task=k))

    def on_epoch_start(self, epoch: int, passes) -> None:
        for k, part in enumerate(self.parts):
            part.on_epoch_start(epoch, partial(passes, task=k))

    def after_step(self) -> None:
        for part in self.parts:
            part.after_step()

    def discard_step(self) -> None:
        for part in self.parts:
            part.discard_step()

    def decoders(self, passes) -> list:
        return [part.decoder(partial(passes, task=k)) for k, part in enumerate(self.parts)]

    def state_dict(self) -> dict:
        return {str(k): part.state_dict() for k, part in enumerate(self.parts)}

    def to(self, device) -> None:
        for part in self.parts:
            part.to(device)

    def load_state_dict(self, state: dict) -> None:
        for k, part in enumerate(self.parts):
            part.load_state_dict(state[str(k)])


class MixtureLoop(Loop):
    """The training loop over a mixture of tasks (the data hooks of Loop, replaced)."""

    def __init__(self, model, objective: TaskRouted, parts: list[TaskData], p: np.ndarray,
                 pad_id: int, cfg, device, run_dir, on_eval, logger=None):
        self.parts, self.p = parts, np.asarray(p, dtype=np.float64)
        train = MixtureTrain(parts)
        super().__init__(model, objective, parts[0].task, train, {}, pad_id, cfg, device,
                         run_dir, on_eval, None, logger)

    def setup_data(self, selection) -> None:
        self.collators = [TaskCollator(d.train, self.pad_id, d.task.is_regression, k)
                          for k, d in enumerate(self.parts)]
        self.dev_collators = [{s: TaskCollator(split, self.pad_id, d.task.is_regression, k)
                               for s, split in d.dev.items()} for k, d in enumerate(self.parts)]
        self.selection_collators = [
            {"selection": TaskCollator(d.selection, self.pad_id, d.task.is_regression, k)}
            if d.selection is not None else {} for k, d in enumerate(self.parts)]
        # the loop's checks: a selection split exists when every task has one
        has_selection = all(d.selection is not None for d in self.parts)
        self.selection = {"selection": None} if has_selection else {}

    def collate(self, indices: list[int]) -> dict:
        k = self.train.task_of(indices[0])
        offset = int(self.train.offsets[k])
        return self.collators[k]([i - offset for i in indices])

    def plan(self) -> tuple[int, int]:
        t, budget = self.t, self.cfg.mixture.budget
        per_epoch = math.ceil(math.ceil(len(self.train) / t.batch_size) / t.grad_accum)
        if t.max_steps:
            return per_epoch, t.max_steps
        if budget:
            return per_epoch, math.ceil(math.ceil(budget / t.batch_size) / t.grad_accum)
        return per_epoch, per_epoch * t.epochs

    def draw_batches(self) -> list[list[int]]:
        t = self.t
        return mixture_batches(self.parts, self.train, self.p, self.per_epoch * t.grad_accum,
                               t.batch_size, self.state.generator, t.group_by_length)

    def eval_examples(self) -> int:
        return sum(len(s) for d in self.parts for s in
                   [*d.dev.values(), *([d.selection] if d.selection is not None else [])])

    def train_passes(self, limit: Optional[int], train_mode: bool = False, task: int = 0):
        """Task `task`'s no-grad passes over `limit` of its training examples (seeded)."""
        part = self.parts[task]
        yield from self.passes_over(part.train, self.collators[task], part.name, limit,
                                    train_mode, [self.cfg.seed, task])

    def evaluate_dev(self) -> tuple[EvalResult, Optional[dict]]:
        decoders = self.state.objective.decoders(self.train_passes)
        self.decode = None
        dev, selection = EvalResult(metrics={}), {}
        for k, d in enumerate(self.parts):
            one = evaluate(self.forward, d.task, d.dev, self.dev_collators[k],
                           self.t.eval_batch_size, decoders[k], self.progress.pass_shown)
            dev.metrics.update({f"{d.name}/{m}": v for m, v in one.metrics.items()})
            dev.predictions.update({(d.name, s): v for s, v in one.predictions.items()})
            if self.selection:
                chosen = evaluate(self.forward, d.task, {"selection": d.selection},
                                  self.selection_collators[k], self.t.eval_batch_size,
                                  decoders[k], self.progress.pass_shown).metrics
                selection.update({f"{d.name}/{m}": v for m, v in chosen.items()})
        names = [d.name for d in self.parts]
        dev.metrics["score"] = float(np.mean([dev.metrics[f"{n}/score"] for n in names]))
        if not self.selection:
            return dev, None
        selection["score"] = float(np.mean([selection[f"{n}/score"] for n in names]))
        return dev, selection


def task_parts(cfg: DictConfig, model_cfg, prepare_data) -> tuple[object, list[TaskData]]:
    """(tokenizer, every mixture task's data), tokenised as single-task runs are (one cache)."""
    parts, tokenizers = [], []
    for name in cfg.mixture.tasks:
        tokenizer, train, dev, selection, _ = prepare_data(cfg, model_cfg, TASKS[name])
        parts.append(TaskData(name, TASKS[name], train, dev, selection))
        tokenizers.append(tokenizer)
    # a pretrained model's tokenizer is the same for every task; the tiny test model's is
    # built from each task's own text: the largest sizes the shared embeddings
    return max(tokenizers, key=len), parts


def mixture_proportions(cfg: DictConfig, parts: list[TaskData], device, run) -> dict:
    """p for the run's rule, and what it was computed from (for the record and the plots)."""
    sizes = [len(d.train) for d in parts]
    rule = cfg.mixture.name
    info: dict = {"rule": rule, "tasks": [d.name for d in parts], "sizes": sizes}
    if rule == "taskpgm":
        from cmift.training.affinity import task_affinities

        info.update(task_affinities(cfg, parts, device, run))  # p: TaskPGM's solution
    else:
        info["p"] = [float(x) for x in proportions(rule, sizes, cfg.mixture.get(rule))]
    return info


def write_mixture(run_dir: Path, info: dict) -> None:
    """mixture.json, and mixture.png / .pdf: p as bars, the task affinities as a heat map."""
    from cmift.runs.files import write_json

    write_json(run_dir / "mixture.json", info)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = info["tasks"]
    heat = info.get("similarity")
    fig, axes = plt.subplots(1, 2 if heat is not None else 1,
                             figsize=(10 if heat is not None else 5, 4), squeeze=False)
    ax = axes[0][0]
    ax.bar(tasks, info["p"], color="#4c72b0")
    ax.set_ylabel("proportion of training batches")
    ax.set_title(f"mixture: {info['rule']}")
    for i, v in enumerate(info["p"]):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    if heat is not None:
        ax = axes[0][1]
        image = ax.imshow(np.asarray(heat), cmap="viridis")
        ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
        ax.set_yticks(range(len(tasks)), tasks)
        for i in range(len(tasks)):
            for j in range(len(tasks)):
                ax.text(j, i, f"{heat[i][j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white")
        ax.set_title(f"task affinity S ({info.get('divergence')})")
        fig.colorbar(image, ax=ax)
    fig.tight_layout()
    for ext in ("png", "pdf"):
        fig.savefig(run_dir / f"mixture.{ext}", dpi=150)
    plt.close(fig)


def train_mixture(cfg: DictConfig, device, run_dir: Path, record, run, prepare_data) -> None:
    """A multi-task run from start to finish: data, mixture, model, objective, fit, save.
    `run` trains a single-task run (taskpgm's models); `prepare_data` is run.py's."""
    from cmift.dropout import DropoutContext, apply_dropout
    from cmift.loggers import build as build_logger
    from cmift.models.backbones import load_model
    from cmift.models.multitask import MultiTaskModel
    from cmift.objectives import build as build_objective
    from cmift.ranks import RANKS
    from cmift.runs.files import MODEL_DIR
    from cmift.runs.logs import setup_logging
    from cmift.runs.predictions import write_predictions
    from cmift.training import checkpoint as ckpt
    from cmift.training.device import peak_memory_mb

    if not RANKS.main:
        RANKS.barrier()  # data-parallel: rank 0 tokenises and fills the caches first
    tokenizer, parts = task_parts(cfg, cfg.model, prepare_data)
    if RANKS.main:
        RANKS.barrier()
    info = mixture_proportions(cfg, parts, device, run)
    setup_logging(run_dir)  # a single-task model trained for taskpgm logged elsewhere
    if RANKS.main:
        write_mixture(run_dir, info)
    record.update(mixture=info)
    log.info("mixture %s over %s: p = %s", info["rule"], info["tasks"],
             ", ".join(f"{t} {p:.3f}" for t, p in zip(info["tasks"], info["p"])))
    seed_everything(cfg.seed)  # the heads' init is seeded
    model = MultiTaskModel({d.name: load_model(cfg.model, d.task.num_labels, d.task.is_regression,
                                               len(tokenizer)) for d in parts})
    setup = apply_dropout(model, DropoutContext(cfg, cfg.model, parts[0].task, parts[0].train,
                                                tokenizer, device.device))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    record.update(dropout_setup=setup, trainable_parameters=trainable,
                  tuning_setup={"method": "full", "trainable_parameters": trainable,
                                "total_parameters": trainable})
    objective = TaskRouted([build_objective(cfg, d.task) for d in parts])
    log.info("model %s (%.1fM parameters, %d heads), objective %s, tasks %s: %s train",
             cfg.model.name, trainable / 1e6, len(parts), cfg.objective.name, info["tasks"],
             info["sizes"])
    logger = build_logger(cfg.logger, run_dir, OmegaConf.to_container(cfg, resolve=True,
                                                                      enum_to_str=True))
    try:
        loop = MixtureLoop(model, objective, parts, np.asarray(info["p"]),
                           tokenizer.pad_token_id, cfg, device, run_dir,
                           on_eval=lambda evals: record.update(evals=evals), logger=logger)
        result = loop.fit()
        if cfg.train.save_model and RANKS.main:
            model.save(run_dir / MODEL_DIR, tokenizer,
                       {d.name: d.task.label_names for d in parts})
        for (name, split), prediction in result.last.predictions.items():
            write_predictions(run_dir, TASKS[name], {f"{name}_{split}": prediction})
        record.finish(result, peak_memory_mb(device))
        if RANKS.main:
            ckpt.clear(run_dir)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.last.metrics.items()
                          if k == "score" or k.endswith("/score"))
        log.info("done in %.0fs (%.1f train ex/s): %s", result.train_seconds,
                 record.data["train_examples_per_second"], shown)
        logger.finish(record.data)
    finally:
        logger.close()
