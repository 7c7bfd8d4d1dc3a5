"""Evaluation: eval-mode passes over a split, predictions, GLUE metrics and CMI diagnostics."""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional

import numpy as np
import torch

from cmift.data.metrics import cmi_diagnostics, pair_accuracy, task_metrics
from cmift.data.tasks import GlueTask, split_suffix
from cmift.data.tokenized import PadCollator, Split, eval_batches
from cmift.objectives import Outputs
from cmift.ranks import RANKS
from cmift.training.device import Forward, to_device


@dataclass
class EvalResult:
    metrics: dict  # flat: task metrics, loss, cmi, gamma, ncmi (suffixed _m/_mm on MNLI)
    predictions: dict = field(default_factory=dict)  # split -> (idx, labels, preds, probs)


def eval_passes(forward: Forward, split: Split, collator: PadCollator, batch_size: int,
                examples: Optional[np.ndarray] = None, inference: bool = False,
                train_mode: bool = False,
                progress: Optional[Callable] = None, shard: bool = False
                ) -> Iterator[tuple[Outputs, torch.Tensor, list]]:
    """(Outputs, labels, indices) over `examples` of `split` (all when None) in eval mode and
    without gradients; batches are length-sorted. Dropout is off, so no random numbers are drawn:
    these passes never change a run's random stream. `train_mode=True` keeps dropout on (its
    masks come from the global stream: the caller forks it). `progress(advance)` hears of each
    batch's examples (a progress bar).

    `inference=True` runs under torch.inference_mode (no autograd bookkeeping at all), for
    outputs that only leave as NumPy; objectives' passes keep no_grad, because their state
    (centroids) is later used by the loss and inference tensors cannot enter autograd.

    `shard=True` on a data-parallel run: this rank's share of the batches (all of them when
    there are fewer batches than ranks); the caller combines the ranks' results."""
    model = forward.model
    was_training = model.training
    model.train(train_mode)
    grad_off = torch.inference_mode if inference else torch.no_grad
    try:
        if examples is None:
            batches = eval_batches(split.lengths, batch_size)
        else:
            batches = [[int(examples[i]) for i in b]
                       for b in eval_batches(split.lengths[examples], batch_size)]
        if shard and len(batches) >= RANKS.world:
            batches = RANKS.shard(batches)
        for indices in batches:
            batch = to_device(collator(indices), forward.device.device)
            # grad mode is per thread: hold it only around the forward, never across a yield
            with grad_off():
                outputs = forward(batch)
            if progress is not None:
                progress(len(indices))
            yield outputs, batch["labels"], indices
    finally:
        model.train(was_training)


def sample_examples(n: int, limit: Optional[int], seed) -> Optional[np.ndarray]:
    """`limit` of `n` examples drawn without replacement from their own generator (seeded by
    `seed`: never the run's random streams), in order; None (every example) when limit is None
    or covers them all."""
    if limit is None or limit >= n:
        return None
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


def predict(forward: Forward, split: Split, collator: PadCollator, batch_size: int,
            decode: Optional[Callable[[Outputs], torch.Tensor]] = None,
            progress: Optional[Callable] = None) -> np.ndarray:
    """Logits (or the class scores of `decode`) for every example of `split`, in the split's
    order (under inference mode)."""
    out = None
    mine = []
    for outputs, _, indices in eval_passes(forward, split, collator, batch_size, inference=True,
                                           progress=progress, shard=True):
        logits = (decode(outputs) if decode else outputs.logits).float()
        if out is None:
            out = np.empty((len(split), logits.shape[-1]), dtype=np.float32)
        out[indices] = logits.cpu().numpy()
        if RANKS.parallel:
            mine.append((indices, out[indices]))
    if RANKS.parallel:  # every rank's rows, each example from the one rank that predicted it
        for part in RANKS.gather(mine):
            for indices, rows in part:
                if out is None:
                    out = np.empty((len(split), rows.shape[-1]), dtype=np.float32)
                out[indices] = rows
    return out


def evaluate(forward: Forward, task: GlueTask, splits: dict[str, Split], collators: dict,
             batch_size: int, decode: Optional[Callable[[Outputs], torch.Tensor]] = None,
             shown=None) -> EvalResult:
    """Task metrics, dev loss and output-space CMI diagnostics of each dev split; predictions
    from the logits, or from the class scores of the objective's `decode`. `shown(label,
    total)`: a progress display per split (TrainProgress.pass_shown)."""
    result = EvalResult(metrics={})
    for name, split in splits.items():
        with shown(f"eval {name}", len(split), False) if shown else nullcontext() as advance:
            logits = predict(forward, split, collators[name], batch_size, decode, advance)
        labels = split.labels
        sfx = split_suffix(task, name)
        if task.is_regression:
            preds = logits[:, 0]
            m = task_metrics(task.metrics, preds, labels)
            m["loss"] = float(np.mean((preds - labels) ** 2))
            probs = None
        else:
            log_probs = torch.log_softmax(torch.from_numpy(logits), -1)
            probs = log_probs.exp().numpy()
            preds = logits.argmax(-1)
            m = task_metrics(task.metrics, preds, labels)
            m["loss"] = float(torch.nn.functional.nll_loss(log_probs, torch.from_numpy(labels)))
            m.update(cmi_diagnostics(log_probs.numpy(), labels))
            if forward.pair_scoring:  # label-token tuning
                m["pair_accuracy"] = pair_accuracy(logits, labels)
        result.metrics.update({f"{k}{sfx}": v for k, v in m.items()})
        result.predictions[name] = (split.idx, labels, preds, probs)
    scores = [result.metrics[f"{k}{split_suffix(task, s)}"] for s in splits for k in task.metrics]
    result.metrics["score"] = float(np.mean(scores))  # GLUE's per-task score: mean of its metrics
    return result
