"""The CPU's own limit: this machine's GEMM rate against what cmift's training loop achieves,
and where one training step's time goes, in fp32 and (where the CPU has bf16 kernels:
avx512_bf16 or AMX) under bf16 autocast (`train.precision=bf16`).

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

from benchlib import MINILM, OFFLINE_ENV, REPO, section_main

SECTION = "## The CPU's limit"


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


def gemm_rate(tokens: int, d: int, ff: int, dtype, repeats: int = 20) -> float:
    """GFLOP/s of torch.mm in `dtype` over one layer's linear products (forward and backward)
    at `tokens` rows."""
    import torch

    products = []
    for n_in, n_out, count in ((d, d, 4), (d, ff, 1), (ff, d, 1)):
        x, w, g = (torch.randn(tokens, n_in, dtype=dtype), torch.randn(n_in, n_out, dtype=dtype),
                   torch.randn(tokens, n_out, dtype=dtype))
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


def achieved(args, info: dict, precision: str) -> dict:
    """A cmift ce run: training GFLOP/s counted per padded token, and its mean padded width."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "cmift", "task=mrpc", "model=minilm_l6", "recipe=run_glue",
               f"data.glue_dir={args.glue_dir}", f"data.max_train_samples={args.samples}",
               "train.epochs=1", "train.save_model=false", f"train.batch_size={args.batch_size}",
               f"output_dir={tmp}", "rerun=true", "data.predict_test=false",
               f"train.precision={precision}"]
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
    if op in ("aten::bernoulli_", "aten::uniform_"):  # torch's masks; uniform-draw masks
        return "dropout masks (bernoulli_ or uniform_)"
    if "adam" in op.lower() or "zero_grad" in op:
        return "optimizer (fused AdamW, zero_grad)"
    if op in ("aten::copy_", "aten::_to_copy"):  # autocast's casts of weights and activations
        return "copies and dtype casts (copy_, _to_copy)"
    return "other operators (layer norm, GELU, dropout scaling, ...)"


def train_step(model, optimizer, collate, indices, amp_dtype) -> float:
    """One training step as cmift's loop takes it (forward, loss, backward, clipping, fused
    AdamW); returns the seconds spent padding and collating the batch."""
    import torch

    start = time.perf_counter()
    batch = collate(indices)
    data = time.perf_counter() - start
    with torch.autocast("cpu", dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                     token_type_ids=batch["token_type_ids"], labels=batch["labels"]).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return data


def profile_step(model, collate, batches, amp_dtype, warmup: int = 3, steps: int = 5) -> dict:
    """Seconds per step by category, from torch.profiler's operator self times; the data and
    Python / dispatch overhead from the step's wall time. `amp_dtype`: autocast's, or None."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-5, fused=True)
    for indices in batches[:warmup]:
        train_step(model, optimizer, collate, indices, amp_dtype)
    chosen = batches[warmup:warmup + steps]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        data = sum(train_step(model, optimizer, collate, indices, amp_dtype)
                   for indices in chosen)
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


def paired_masks(model, collate, batches, amp_dtype, steps: int) -> dict:
    """Whole training steps with torch's bernoulli_ masks against `train.dropout_masks=uniform`
    (two copies of the model, the same batches), alternating step by step and which goes first,
    so that the machine's drift falls on both alike: median step time of each and the median of
    the paired ratios."""
    import copy
    import statistics

    import torch

    from cmift.dropout.masks import draw_masks

    models = {"bernoulli": copy.deepcopy(model).train(), "uniform": copy.deepcopy(model).train()}
    draw_masks(models["uniform"], "uniform")
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=2e-5, fused=True)
                  for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    for i in range(steps + 2):  # the first two (one each way) warm up
        indices = batches[i % len(batches)]
        for name in (("bernoulli", "uniform") if i % 2 else ("uniform", "bernoulli")):
            start = time.perf_counter()
            train_step(models[name], optimizers[name], collate, indices, amp_dtype)
            if i >= 2:
                times[name].append(time.perf_counter() - start)
    ratios = [u / b for u, b in zip(times["uniform"], times["bernoulli"])]
    return {"steps": steps, "ratio": statistics.median(ratios),
            **{k: statistics.median(v) for k, v in times.items()}}


def act_on_masks(model, collate, batches, precisions: dict, steps: int = 24) -> dict:
    """Dropout masks' share, acted on: `train.dropout_masks=uniform` against torch's bernoulli_
    in the precision the CPU studies train in (bf16 where the CPU has it), as whole steps paired
    at the bench's thread count and at 1 (how the studies run, two side by side), and the
    uniform step's profile."""
    import copy

    import torch

    from cmift.dropout.masks import draw_masks

    name = "bf16" if "bf16" in precisions else "fp32"
    dtype, threads = precisions[name], torch.get_num_threads()
    paired = {}
    for t in sorted({threads, 1}, reverse=True):
        torch.set_num_threads(t)
        paired[t] = paired_masks(model, collate, batches, dtype, steps)
    torch.set_num_threads(threads)
    uniform = copy.deepcopy(model)
    draw_masks(uniform, "uniform")
    column = f"{name}, uniform masks"
    rows = [f"| {t} | {1000 * r['bernoulli']:.0f} | {1000 * r['uniform']:.0f} | "
            f"**{r['ratio']:.3f}** |" for t, r in paired.items()]
    text = "\n".join([
        f"Dropout masks, acted on ({name}): `train.dropout_masks=uniform` draws the same "
        "Bernoulli masks (keep where U[0,1) >= p, scaled by 1/(1-p)) with torch.rand instead of "
        "bernoulli_, which is vectorised only on Intel CPUs (MKL) and draws one element at a time "
        "elsewhere. A different random stream, so a run's identity names it; the default stays "
        "bernoulli (every finished run). Whole training steps, the two alternating on the same "
        f"batches ({steps} each after a warm-up), median step time and the median of the paired "
        "ratios:", "",
        "| torch threads | bernoulli ms per step | uniform ms per step | uniform / bernoulli |",
        "|---|---|---|---|", *rows, "",
        f"The uniform step's profile is the `{column}` column below."])
    return {"column": column, "profile": profile_step(uniform, collate, batches, dtype),
            "text": text}


def main() -> None:
    section_main(__doc__, SECTION, measure)


def measure(args) -> str:
    import torch

    from cmift.training.device import cpu_has_bf16

    model, collate, batches = load_batches(args.glue_dir, args.samples, args.batch_size)
    info = shape(model)
    precisions = {"fp32": None}
    if cpu_has_bf16():
        precisions["bf16"] = torch.bfloat16
    found = {}
    for name, dtype in precisions.items():
        run = achieved(args, info, name)
        tokens = round(args.batch_size * run["width"])
        gemm = gemm_rate(tokens, info["hidden"], info["intermediate"], dtype or torch.float32)
        found[name] = {**run, "tokens": tokens, "gemm": gemm, "fraction": run["gflops"] / gemm,
                       "profile": profile_step(model, collate, batches, dtype)}
    masks = act_on_masks(model, collate, batches, precisions)
    found[masks["column"]] = {"profile": masks["profile"]}  # a profile column of its own
    fp32 = found["fp32"]
    shares = {n: {k: v / f["profile"]["wall"] for k, v in f["profile"]["per_step"].items()}
              for n, f in found.items()}
    gemms = category("aten::mm")
    biggest = max(shares["fp32"], key=shares["fp32"].get)
    if fp32["fraction"] >= 0.6:
        verdict = ("at or above 60%: the step is near what this CPU's fp32 matrix "
                   "multiplication can do; speed comes from doing less work (fewer padded "
                   "tokens, no repeated runs) or from cheaper arithmetic, not from the step")
    else:
        verdict = (f"below 60%: the biggest share of the step is {biggest} "
                   f"({100 * shares['fp32'][biggest]:.0f}%), where to act")
    if biggest == gemms and "bf16" in found:
        verdict += ("; the GEMMs' own lever is cheaper arithmetic: bf16 autocast, "
                    f"{found['bf16']['examples_per_second'] / fp32['examples_per_second']:.2f}x "
                    "the examples/s")
    names = [n for n in found if "gemm" in found[n]]
    lines = [SECTION, "",
             f"Written by `python bench/cpu_limit.py` (also by `make bench`) on "
             f"{time.strftime('%Y-%m-%d')}, {torch.get_num_threads()} torch threads. MiniLM-L6, "
             f"MRPC's first {args.samples} training examples, batch {args.batch_size}, "
             "length-grouped; fp32, and bf16 autocast (`train.precision=bf16`: bf16 matrix "
             "products, fp32 weights, optimizer and losses) where the CPU has bf16 kernels.", "",
             "| | " + " | ".join(names) + " |", "|---|" + "---|" * len(names),
             f"| GEMM rate (torch.mm, MiniLM-L6's linear shapes at {fp32['tokens']} tokens) | "
             + " | ".join(f"{found[n]['gemm']:.1f} GFLOP/s" for n in names) + " |",
             f"| cmift ce training, counted per padded token (6 N + 12 L s d; N = "
             f"{info['non_embedding_params'] / 1e6:.1f} M, mean width {fp32['width']:.1f}) | "
             + " | ".join(f"{found[n]['gflops']:.1f} GFLOP/s "
                          f"({found[n]['examples_per_second']:.1f} examples/s)" for n in names)
             + " |",
             "| fraction of that precision's GEMM rate | "
             + " | ".join(f"{100 * found[n]['fraction']:.0f}%" for n in names) + " |"]
    if "bf16" in found:
        speedup = found["bf16"]["examples_per_second"] / fp32["examples_per_second"]
        lines.append(f"| training examples/s, bf16 / fp32 | | **{speedup:.2f}x** |")
    lines += ["", f"fp32: **{100 * fp32['fraction']:.0f}%** of the GEMM rate, {verdict}."]
    if "bf16" in found:
        bf16 = shares["bf16"]
        other = max((k for k in bf16 if k != gemms), key=bf16.get)
        lines += ["", f"bf16: {100 * found['bf16']['fraction']:.0f}% of the bf16 GEMM rate. "
                  f"Its GEMMs take {100 * bf16[gemms]:.0f}% of the step; the next largest share "
                  f"is {other} ({100 * bf16[other]:.0f}%)."]
    lines += ["", masks["text"]]
    names = list(found)
    lines += ["",
              "One step's time by category (torch.profiler; "
              + ", ".join(f"{n} {found[n]['profile']['wall'] * 1000:.0f} ms" for n in names)
              + " per step with the profiler on):", "",
              "| category | " + " | ".join(f"{n} ms per step | {n} share" for n in names) + " |",
              "|---|" + "---|---|" * len(names)]
    keys = sorted(fp32["profile"]["per_step"], key=lambda k: -fp32["profile"]["per_step"][k])
    for key in keys:
        cells = []
        for n in names:
            prof = found[n]["profile"]
            seconds = prof["per_step"].get(key, 0.0)
            cells += [f"{seconds * 1000:.0f}", f"{100 * seconds / prof['wall']:.0f}%"]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
