"""Tokenized datasets cached on disk, dynamic padding, and the data loaders.

The cache key holds everything that changes the tokens: task, raw-data fingerprint, tokenizer
(name and a hash of its vocabulary), max length and sample limits. A second run of the same
task finds the saved `datasets` folder and does not tokenize again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from cmift import faults
from cmift.data.tasks import GlueTask, data_fingerprint, load_raw

log = logging.getLogger(__name__)
CACHE_FORMAT = 2  # bump when the stored columns change
SKIPPED_FILE = "skipped_rows.json"  # {split: [line numbers]} left out by data.skip_bad_rows


def tokenizer_fingerprint(tokenizer) -> str:
    """A hash of the tokenizer's vocabulary and rules (not of the truncation / padding state,
    which a fast tokenizer changes each time it is called)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("truncation", None)
        spec.pop("padding", None)
    else:
        spec = tokenizer.get_vocab()
    state = json.dumps(spec, sort_keys=True)
    return hashlib.sha256(state.encode()).hexdigest()[:16]


def cache_key(task: GlueTask, data_cfg, tokenizer) -> str:
    key = {
        "format": CACHE_FORMAT,
        "task": task.name,
        "source": data_fingerprint(task.name, data_cfg.glue_dir),
        "tokenizer": [getattr(tokenizer, "name_or_path", ""), tokenizer_fingerprint(tokenizer)],
        "max_seq_length": data_cfg.max_seq_length,
        "max_train_samples": data_cfg.max_train_samples,
        "max_eval_samples": data_cfg.max_eval_samples,
        "skip_bad_rows": data_cfg.skip_bad_rows,
    }
    if data_cfg.selection_fraction:  # only then: older caches keep their keys
        key["selection"] = [data_cfg.selection_fraction, data_cfg.selection_seed]
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return f"{task.name}-{digest}"


def limit_samples(raw, data_cfg):
    """First N examples of train / each dev split, as run_glue's max_*_samples do."""
    for split in list(raw):  # before the selection split is carved from the (limited) train
        limit = data_cfg.max_train_samples if split == "train" else data_cfg.max_eval_samples
        if limit is not None and limit < len(raw[split]):
            raw[split] = raw[split].select(range(limit))
    return raw


SELECTION = "selection"  # the split carved from train for model selection


def carve_selection(raw, fraction: float, seed: int, regression: bool):
    """Move `fraction` of the training examples into a `selection` split: stratified by label
    (random for regression), drawn with its own seed, so every method and every run seed sees
    the same split. Hyperparameters are chosen on it; GLUE dev stays for reporting."""
    if not fraction:
        return raw
    train = raw["train"]
    labels = np.asarray(train["label"])
    rng = np.random.default_rng(seed)
    groups = [np.arange(len(labels))] if regression else [
        np.flatnonzero(labels == c) for c in np.unique(labels)]
    chosen = np.concatenate([rng.permutation(g)[:round(fraction * len(g))] for g in groups])
    keep = np.setdiff1d(np.arange(len(labels)), chosen)  # both in the file's order
    raw[SELECTION] = train.select(np.sort(chosen))
    raw["train"] = train.select(keep)
    return raw


def tokenize_splits(raw, tokenizer, max_length: int):
    def encode(batch):
        texts = [batch["text_a"]] + ([batch["text_b"]] if "text_b" in batch else [])
        enc = tokenizer(*texts, truncation=True, max_length=max_length)
        out = {"input_ids": enc["input_ids"]}
        if "token_type_ids" in enc:
            out["token_type_ids"] = enc["token_type_ids"]
        return out

    first = next(iter(raw.values()))
    text_cols = [c for c in ("text_a", "text_b") if c in first.column_names]
    return raw.map(encode, batched=True, remove_columns=text_cols, desc="tokenizing")


def load_tokenized(task: GlueTask, data_cfg, tokenizer):
    """(tokenized DatasetDict, {split: skipped line numbers}), from the on-disk cache when
    present (else built and saved)."""
    from datasets import load_from_disk

    key = cache_key(task, data_cfg, tokenizer)
    folder = Path(data_cfg.cache_dir).expanduser() / "tokenized" / key
    if (folder / "dataset_dict.json").is_file():
        log.info("tokenized data: cache hit %s", folder)
        return load_from_disk(str(folder)), json.loads((folder / SKIPPED_FILE).read_text())
    log.info("tokenized data: building %s", folder)
    skipped: dict = {}
    raw = load_raw(task, data_cfg.glue_dir, data_cfg.skip_bad_rows, skipped)
    if skipped:
        log.warning("skipped malformed rows (data.skip_bad_rows=true): %s",
                    {k: len(v) for k, v in skipped.items()})
    raw = carve_selection(limit_samples(raw, data_cfg), data_cfg.selection_fraction,
                          data_cfg.selection_seed, task.is_regression)
    tokenized = tokenize_splits(raw, tokenizer, data_cfg.max_seq_length)
    # Save beside the target and rename, so a killed run never leaves a half-written cache.
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent)
    tokenized.save_to_disk(tmp)
    (Path(tmp) / SKIPPED_FILE).write_text(json.dumps(skipped))
    faults.kill_point("tokenized")
    try:
        os.rename(tmp, folder)
    except OSError:  # another run saved the same key first: theirs is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return load_from_disk(str(folder)), skipped


@dataclass
class Split:
    """One tokenized split held as NumPy arrays, ready for fast padding."""

    input_ids: list[np.ndarray]
    token_type_ids: Optional[list[np.ndarray]]
    labels: np.ndarray
    idx: np.ndarray

    @classmethod
    def from_dataset(cls, ds) -> "Split":
        ds = ds.with_format("numpy")
        cols = ds.column_names
        as_list = lambda name: [np.asarray(x, dtype=np.int64) for x in ds[name]]  # noqa: E731
        return cls(
            input_ids=as_list("input_ids"),
            token_type_ids=as_list("token_type_ids") if "token_type_ids" in cols else None,
            labels=np.asarray(ds["label"]),
            idx=np.asarray(ds["idx"]),
        )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self))


class PadCollator:
    """Dynamic padding: each batch is padded to its own longest sequence. The same tensors as
    transformers' DataCollatorWithPadding (tested), which is not used because it pads through
    the tokenizer, example by example from Python lists; this pads NumPy arrays held once per
    split, by index, and needs no tokenizer in the training loop."""

    def __init__(self, split: Split, pad_id: int, regression: bool):
        self.split = split
        self.pad_id = pad_id
        self.label_dtype = torch.float32 if regression else torch.long

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        s = self.split
        width = max(len(s.input_ids[i]) for i in indices)
        ids = np.full((len(indices), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(indices), width), dtype=np.int64)
        types = np.zeros((len(indices), width), dtype=np.int64) if s.token_type_ids else None
        for row, i in enumerate(indices):
            n = len(s.input_ids[i])
            ids[row, :n] = s.input_ids[i]
            mask[row, :n] = 1
            if types is not None:
                types[row, :n] = s.token_type_ids[i]
        batch = {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "labels": torch.as_tensor(s.labels[indices], dtype=self.label_dtype),
            "index": torch.as_tensor(indices, dtype=torch.long),
        }
        if types is not None:
            batch["token_type_ids"] = torch.from_numpy(types)
        return batch


MEGABATCH = 50  # length grouping sorts runs of 50 batches, as HF's LengthGroupedSampler does


def train_batches(lengths: np.ndarray, batch_size: int, generator: torch.Generator,
                  group_by_length: bool = False) -> list[list[int]]:
    """One epoch's shuffled batches (one may be short), drawn from the run's generator.

    With `group_by_length`, the shuffled order is cut into megabatches of MEGABATCH batches,
    each megabatch is sorted by length, cut into batches, and the batches are shuffled again:
    batches hold examples of similar length, so dynamic padding pads little, while which
    examples meet in a batch and the batch order stay random. Without it, this is exactly
    `randperm` cut into consecutive batches.

    Not transformers' LengthGroupedSampler: that draws from the global RNG (so a resumed run
    could not redraw an epoch's order without replaying every random call before it), while this
    takes the run's own generator, whose state a checkpoint stores before each epoch's shuffle."""
    order = torch.randperm(len(lengths), generator=generator).tolist()
    if not group_by_length:
        return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    size = MEGABATCH * batch_size
    batches = []
    for start in range(0, len(order), size):
        mega = np.asarray(order[start:start + size])
        mega = mega[np.argsort(-lengths[mega], kind="stable")].tolist()  # ties keep random order
        batches += [mega[i:i + batch_size] for i in range(0, len(mega), batch_size)]
    shuffle = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffle]


def eval_batches(lengths: np.ndarray, batch_size: int) -> list[list[int]]:
    """Batches of similar length (sorted), so evaluation pads little; order restored later."""
    order = np.argsort(lengths, kind="stable").tolist()
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
