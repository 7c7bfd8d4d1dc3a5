"""The diagonal empirical Fisher of a backbone, per parameter tensor, measured once and cached.

  F = (1/n) sum_i g_i (.) g_i   per parameter element, g_i the gradient of example i's loss,

one example per gradient, as in the authors' code (arXiv 2406.14005). Guided dropout only reads
each tensor's mean of F over its elements, so that is what is kept.

Sources (`dropout.guided.source`):
- `mlm`: the masked-LM loss of the checkpoint's own MLM head (the paper's), on the task's
  training text: 15% of the non-special tokens, of which 80% become [MASK], 10% a random token
  and 10% stay (BERT's recipe). A checkpoint without an MLM head is refused.
- `task`: the task's own loss (cross-entropy; MSE on STS-B) of the sequence classifier with its
  head freshly initialised, on labelled training examples; works for every backbone.

Examples, masks and the fresh head come from `fisher_seed`, never from the run's seed or random
stream: every run of a sweep reads the same Fisher, and a run's results do not depend on whether
the Fisher was computed or read from the cache.

Per-example gradients are exact, two ways (`dropout.guided.per_example`): vectorised,
torch.func.vmap over the gradient of one example's loss, a chunk of examples at a time (padding
is masked, so it changes no gradient); or a loop of ordinary backward passes, one example at a
time. `auto` takes vmap on CUDA and the loop on a CPU, where it measured faster.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import Callable

from cmift.config.spec import ConfigError
from cmift.lazy import F, torch
from cmift.runs.files import read_json, write_json

log = logging.getLogger("cmift")
FISHER_VERSION = 1  # bump when what is measured changes: old cache entries are then not read
MLM_PROBABILITY = 0.15


# ----- per-example gradients -------------------------------------------------------------
EMBEDS = "inputs_embeds"  # the token embeddings as an input, to differentiate through them


def _model_inputs(example: dict) -> dict:
    """One example's tensors (L,) as a batch of one, with the padding as an additive 4D mask:
    transformers' own mask builder branches on the mask's values, which vmap cannot trace."""
    mask = example["attention_mask"][None, None, None, :].to(torch.float32)
    inputs = {"attention_mask": (1.0 - mask) * torch.finfo(torch.float32).min}
    if EMBEDS in example:
        inputs[EMBEDS] = example[EMBEDS][None]
    else:
        inputs["input_ids"] = example["input_ids"][None]
    if "token_type_ids" in example:
        inputs["token_type_ids"] = example["token_type_ids"][None]
    return inputs


def per_example_grads(model, names: list[str], batch: dict, loss_fn: Callable) -> dict:
    """{name: (B, *shape)} gradients of each example's loss w.r.t. the parameters `names`
    (full names in `model`), for a padded batch of B examples; `loss_fn(logits, example)` is one
    example's scalar loss from logits of shape (1, ...). When the batch holds `inputs_embeds`
    (B, L, d) the model reads them instead of `input_ids`, and their gradient comes back too."""
    from torch.func import functional_call, grad, vmap

    params = dict(model.named_parameters())
    wrt = {n: params[n].detach() for n in names}

    def one(weights: dict, embeds, example: dict):
        if embeds is not None:
            example = {**example, EMBEDS: embeds}
        out = functional_call(model, weights, args=(), kwargs=_model_inputs(example))
        return loss_fn(out.logits, example)

    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids", "labels", "mlm_labels")
            if k in batch]
    examples = {k: batch[k] for k in keys}
    if EMBEDS not in batch:
        return vmap(grad(one), in_dims=(None, None, 0))(wrt, None, examples)
    weights, embeds = vmap(grad(one, argnums=(0, 1)), in_dims=(None, 0, 0))(
        wrt, batch[EMBEDS], examples)
    return {**weights, EMBEDS: embeds}


def embedding_square_sum(ids, embeds_grad) -> float:
    """sum over examples of ||g_i||^2 for the word-embedding matrix, from the gradients of the
    looked-up rows: example i's gradient of row v is the sum of its token gradients with id v,
    every other row's is 0. Exact, without a (vocab x d) gradient per example."""
    b, length = ids.shape
    keys = (torch.arange(b, device=ids.device)[:, None] * (int(ids.max()) + 1) + ids).flatten()
    unique, inverse = torch.unique(keys, return_inverse=True)
    rows = torch.zeros(len(unique), embeds_grad.shape[-1], dtype=embeds_grad.dtype,
                       device=embeds_grad.device)
    rows.index_add_(0, inverse, embeds_grad.reshape(b * length, -1))
    return float(rows.detach().pow(2).sum(dtype=torch.float64))


def _sparse_word_embeddings(model) -> str | None:
    """The word-embedding weight's name when only the lookup reads it (no tied output layer):
    then its per-example gradients are taken through the looked-up rows."""
    table = model.get_input_embeddings()
    out = model.get_output_embeddings()
    if out is not None and out.weight is table.weight:
        return None
    return next(n for n, p in model.named_parameters() if p is table.weight)


def task_loss(regression: bool) -> Callable:
    if regression:
        return lambda logits, ex: F.mse_loss(logits.squeeze(-1), ex["labels"][None])
    return lambda logits, ex: F.cross_entropy(logits, ex["labels"][None])


def mlm_loss(logits, example):
    return F.cross_entropy(logits.flatten(0, 1), example["mlm_labels"], ignore_index=-100)


def mask_tokens(batch: dict, tokenizer, generator) -> dict:
    """BERT's masking, drawn from `generator`; at least one token per example is masked."""
    ids = batch["input_ids"]
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)))
    eligible = (batch["attention_mask"] == 1) & ~torch.isin(ids, special)
    chosen = (torch.rand(ids.shape, generator=generator) < MLM_PROBABILITY) & eligible
    for row in torch.nonzero(~chosen.any(1) & eligible.any(1)).flatten().tolist():
        options = torch.nonzero(eligible[row]).flatten()
        pick = torch.randint(len(options), (1,), generator=generator)
        chosen[row, options[pick]] = True
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    draw = torch.rand(ids.shape, generator=generator)
    random_ids = torch.randint(len(tokenizer), ids.shape, generator=generator)
    masked = torch.where(chosen & (draw < 0.8), torch.full_like(ids, tokenizer.mask_token_id), ids)
    masked = torch.where(chosen & (draw >= 0.8) & (draw < 0.9), random_ids, masked)
    return {**batch, "input_ids": masked, "mlm_labels": labels}


def _vmap_square_sums(model, names, batch, loss_fn, sums: dict) -> None:
    """Adds each tensor's sum over the batch's examples of g_i^2 (vectorised)."""
    word = _sparse_word_embeddings(model)
    if word in names:
        with torch.no_grad():
            batch = {**batch, EMBEDS: model.get_input_embeddings()(batch["input_ids"])}
    grads = per_example_grads(model, [n for n in names if n != word], batch, loss_fn)
    if EMBEDS in grads:
        sums[word] += embedding_square_sum(batch["input_ids"], grads.pop(EMBEDS))
    for n, g in grads.items():
        sums[n] += float(g.detach().pow(2).sum(dtype=torch.float64))


def _loop_square_sums(model, names, batch, loss_fn, sums: dict) -> None:
    """The same sums from one ordinary backward pass per example, each without padding."""
    params = dict(model.named_parameters())
    for row in range(batch["input_ids"].shape[0]):
        example = {k: v[row] for k, v in batch.items()}
        keep = example["attention_mask"].bool()
        example = {k: v[keep] if v.ndim == 1 and v.shape[0] == keep.shape[0] else v
                   for k, v in example.items()}
        model.zero_grad(set_to_none=True)
        loss_fn(model(**_model_inputs(example)).logits, example).backward()
        for n in names:
            sums[n] += float(params[n].grad.pow(2).sum(dtype=torch.float64))
    model.zero_grad(set_to_none=True)


def tensor_fisher(model, names: list[str], batches, loss_fn: Callable, how: str = "vmap"
                  ) -> tuple[dict, int]:
    """({name: mean over elements of the empirical Fisher}, n examples) over `batches`, the
    per-example gradients taken vectorised (`how="vmap"`) or one backward pass at a time
    (`"loop"`): the same numbers up to rounding, at different speeds (bench/fisher_per_example)."""
    sums = {n: 0.0 for n in names}
    count = 0
    model.eval()  # no dropout: the Fisher of the model itself
    add = _vmap_square_sums if how == "vmap" else _loop_square_sums
    for batch in batches:
        add(model, names, batch, loss_fn, sums)
        count += batch["input_ids"].shape[0]
    params = dict(model.named_parameters())
    return {n: sums[n] / (count * params[n].numel()) for n in names}, count


# ----- the Fisher of a run's backbone ----------------------------------------------------
def _fisher_model(source: str, model_cfg, task, vocab_size: int, seed: int):
    """The model the Fisher is measured on, built under `seed` without touching the caller's
    random stream; eager attention: vmap has batching rules for its matmuls and softmax, none
    for the SDPA kernels (it would fall back to a slow per-example loop). Same maths."""
    model = _build_fisher_model(source, model_cfg, task, vocab_size, seed)
    model.set_attn_implementation("eager")
    return model


def _build_fisher_model(source: str, model_cfg, task, vocab_size: int, seed: int):
    from cmift.models.backbones import is_tiny, load_model, resolve_path

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if source == "task":
            return load_model(model_cfg, task.num_labels, task.is_regression, vocab_size)
        if is_tiny(model_cfg):  # no checkpoint to read: a random MLM model of the tiny shape
            from transformers import BertConfig, BertForMaskedLM

            t = model_cfg.tiny
            return BertForMaskedLM(BertConfig(
                vocab_size=vocab_size, hidden_size=t.hidden, num_hidden_layers=t.layers,
                num_attention_heads=t.heads, intermediate_size=t.intermediate))
        from transformers import AutoModelForMaskedLM

        folder = resolve_path(model_cfg.name_or_path)
        try:
            model, info = AutoModelForMaskedLM.from_pretrained(
                folder, output_loading_info=True, trust_remote_code=model_cfg.trust_remote_code)
        except ValueError as e:  # no masked-LM class for this architecture
            raise ConfigError(f"dropout.guided.source='mlm' is not allowed for model "
                              f"{model_cfg.name}: {str(e).splitlines()[0]}; use "
                              "dropout.guided.source=task") from None
        missing = [k for k in info["missing_keys"] if not k.endswith("position_ids")]
        if missing:
            raise ConfigError(f"dropout.guided.source='mlm' is not allowed for model "
                              f"{model_cfg.name}: its checkpoint has no masked-LM head "
                              f"({len(missing)} weights missing, e.g. {missing[0]}); use "
                              "dropout.guided.source=task")
        return model


def cache_key(model_cfg, task_name: str, data_fingerprint: dict, train, max_seq_length: int,
              knobs) -> dict:
    """What the Fisher depends on: the backbone, the data (the files, and which of their rows
    are the run's training split), the sequence length and the Fisher's own knobs; not the
    run's seed nor the schedule that turns scores into rates."""
    weights = (dict(model_cfg.tiny) if model_cfg.name_or_path == "tiny"
               else model_cfg.weights_sha256)
    import numpy as np

    rows = hashlib.sha256(np.ascontiguousarray(train.idx, dtype=np.int64).tobytes()).hexdigest()
    return {"version": FISHER_VERSION, "model": model_cfg.name_or_path, "weights": weights,
            "task": task_name, "data": data_fingerprint, "train_rows": rows[:16],
            "max_seq_length": max_seq_length,
            "source": str(getattr(knobs.source, "value", knobs.source)),
            "samples": knobs.samples, "seed": knobs.fisher_seed}


def backbone_fisher(key: dict, cache_dir: Path, compute: Callable[[], tuple[dict, int]]
                    ) -> dict:
    """The cached entry for `key` ({"tensors", "examples", "seconds", ...}), computing and
    saving it (atomically) on a miss; "cache" says which happened."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()
    path = Path(cache_dir).expanduser() / "fisher" / f"{digest[:16]}.json"
    if path.is_file():
        try:
            entry = read_json(path)
            if entry.get("key") == json.loads(json.dumps(key, default=str)):
                return {**entry, "cache": "hit", "path": str(path)}
        except (OSError, ValueError):
            log.warning("Fisher cache %s is unreadable: measuring again", path)
    start = time.perf_counter()
    tensors, n = compute()
    seconds = time.perf_counter() - start
    entry = {"key": key, "tensors": tensors, "examples": n, "seconds": round(seconds, 2),
             "examples_per_second": round(n / max(seconds, 1e-9), 2)}
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, entry)
    return {**entry, "cache": "miss", "path": str(path)}


def measure(model_cfg, task, train, tokenizer, knobs, device) -> tuple[dict, int]:
    """Compute the per-tensor Fisher of the backbone from `knobs` (dropout.guided)."""
    import numpy as np

    from cmift.data.tokenized import PadCollator

    source = str(getattr(knobs.source, "value", knobs.source))
    model = _fisher_model(source, model_cfg, task, len(tokenizer), knobs.fisher_seed)
    model.to(device)
    prefix = model.base_model_prefix
    names = [n for n, _ in model.named_parameters() if n.startswith(f"{prefix}.")]
    generator = torch.Generator().manual_seed(knobs.fisher_seed)
    n = min(knobs.samples, len(train))
    chosen = torch.randperm(len(train), generator=generator)[:n].numpy()
    chosen = chosen[np.argsort(train.lengths[chosen], kind="stable")]  # less padding per chunk
    collate = PadCollator(train, tokenizer.pad_token_id, task.is_regression)
    loss_fn = mlm_loss if source == "mlm" else task_loss(task.is_regression)

    def batches():
        for start in range(0, n, knobs.chunk):
            batch = collate(chosen[start:start + knobs.chunk].tolist())
            batch.pop("index")
            if source == "mlm":
                batch = mask_tokens(batch, tokenizer, generator)
            yield {k: v.to(device) for k, v in batch.items()}

    log.info("Fisher (%s loss) of %s on %d training examples", source, model_cfg.name, n)
    how = str(getattr(knobs.per_example, "value", knobs.per_example))
    if how == "auto":  # measured: vmap loses to the loop on a 2-core CPU (0.72x on MiniLM-L6)
        how = "vmap" if torch.device(device).type == "cuda" else "loop"
    tensors, count = tensor_fisher(model, names, batches(), loss_fn, how)
    # names relative to the backbone: the classifier's and the MLM model's sites agree
    return {name[len(prefix) + 1:]: v for name, v in tensors.items()}, count


def fisher_for_run(model_cfg, task, train, tokenizer, knobs, device, data_cfg,
                   data_fingerprint: dict) -> dict:
    key = cache_key(model_cfg, task.name, data_fingerprint, train, data_cfg.max_seq_length,
                    knobs)
    return backbone_fisher(key, Path(data_cfg.cache_dir),
                           lambda: measure(model_cfg, task, train, tokenizer, knobs, device))
