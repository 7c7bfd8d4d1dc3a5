"""The GPU check (#20 goal 5): MiniLM-L6, BERT-base and DistilBERT on MRPC on one CUDA card,
model FLOPs utilisation, the CUDA paths exercised, and the paper's studies in GPU-hours.

Run it on a CUDA machine; it writes the "GPU" section of docs/PERFORMANCE.md (dated) and leaves
the rest of the file alone. Weights are random with each model's exact shape (BertConfig's and
DistilBertConfig's defaults; MiniLM-L6: 6 layers of 384): speed does not depend on their
values, and no hub access is needed. The tokenizer is the bundled MiniLM one, which has
bert-base-uncased's vocabulary (30,522 uncased WordPieces). Precision is cmift's default on CUDA
(bf16 autocast, TF32 matmuls, fused AdamW, pinned host batches copied with non_blocking).

Model FLOPs per trained token: 6 N (N = non-embedding parameters: forward 2N, backward 4N)
plus attention scores and mixing, 12 L s d for L layers, width d and padded batch width s
(taken as the run's mean padded width). MFU = those FLOPs per second / the card's dense bf16
peak.

The CUDA paths: a min_cmi run (feature-space centroids on the GPU) is stopped by SIGTERM at a
known step (CMIFT_FAULTS, never a timer) and run again: it resumes from its checkpoint, the
centroids restored onto the GPU, and is compared with the same run left uninterrupted.

On a machine without cmift's dependencies, `bash bench/gpu_kit.sh` (run where pip works) puts
the wheels, MRPC and the tokenizer under .gpu_kit/, and the device runs

  python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu_kit/whl/*.whl
  PYTHONPATH=/tmp/site:. python3 bench/gpu_bert_base.py --kit .gpu_kit --out $OUT/PERFORMANCE.md

  python bench/gpu_bert_base.py --glue-dir ../shared/glue [--epochs 3] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import MINILM, OFFLINE_ENV, REPO, REPORT, add_glue_dir, replace_section

# Dense bf16 tensor-core peaks from the vendor data sheets (TFLOP/s, without sparsity).
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0,
                    "A100": 312.0, "L40S": 362.0, "A10G": 70.0}
SECTION = "## GPU"
# GLUE's classification training sets (examples), for the paper's studies in GPU-hours
GLUE_TRAIN = {"cola": 8551, "sst2": 67349, "mrpc": 3668, "qqp": 363846, "mnli": 392702,
              "qnli": 104743, "rte": 2490, "wnli": 635}
MODELS = {  # cmift's model group, and the random model's shape
    "minilm_l6": ("minilm_l6", {"num_hidden_layers": 6, "hidden_size": 384,
                                "num_attention_heads": 12, "intermediate_size": 1536}),
    "bert_base": ("bert_base", {}),
    "distilbert": ("distilbert", {}),
}


def peak_tflops(device_name: str) -> float | None:
    for key, value in BF16_PEAK_TFLOPS.items():
        if key in device_name:
            return value
    return None


def tokenizer_folder(kit: Path | None) -> str:
    if kit is not None:
        return str(kit / "tokenizer")
    from cmift.models.backbones import resolve_path

    return str(resolve_path(MINILM))


def write_random(folder: Path, kind: str, tokenizer: str) -> dict:
    """A classifier of `kind`'s shape with random weights, and the BERT uncased tokenizer."""
    from transformers import (
        AutoTokenizer,
        BertConfig,
        BertForSequenceClassification,
        DistilBertConfig,
        DistilBertForSequenceClassification,
    )

    if kind == "distilbert":
        config = DistilBertConfig(num_labels=2)
        model = DistilBertForSequenceClassification(config)
        embeddings, layers, hidden = model.distilbert.embeddings, config.n_layers, config.dim
    else:
        config = BertConfig(num_labels=2, **MODELS[kind][1])
        model = BertForSequenceClassification(config)
        embeddings = model.bert.embeddings
        layers, hidden = config.num_hidden_layers, config.hidden_size
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(tokenizer).save_pretrained(str(folder))
    total = sum(p.numel() for p in model.parameters())
    return {"layers": layers, "hidden": hidden, "params": total,
            "non_embedding_params": total - sum(p.numel() for p in embeddings.parameters())}


def cmift(args, overrides: list[str], env: dict | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "cmift", "task=mrpc", f"data.glue_dir={args.glue_dir}",
           f"train.batch_size={args.batch_size}", "train.save_model=false",
           "data.predict_test=false", *overrides]
    if args.samples:  # a dry run on a CPU
        cmd += [f"data.max_train_samples={args.samples}", f"data.max_eval_samples={args.samples}"]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**OFFLINE_ENV, **(env or {})})


def record(out: Path, name: str = "metrics.json") -> dict:
    (path,) = out.rglob(name)
    return json.loads(path.read_text())


def speed(args, kind: str, folder: Path, shape: dict, peak: float | None, tmp: Path) -> dict:
    out = tmp / f"speed-{kind}"
    proc = cmift(args, [f"model={MODELS[kind][0]}", f"model.name_or_path={folder}",
                        f"train.epochs={args.epochs}", f"output_dir={out}", "rerun=true"])
    if proc.returncode:
        sys.exit(f"cmift failed on {kind} ({proc.returncode}):\n{proc.stderr[-3000:]}")
    r = record(out)
    width = r["train_tokens"] / r["train_examples"]  # mean padded batch width
    per_token = 6 * shape["non_embedding_params"] + 12 * shape["layers"] * width * shape["hidden"]
    tflops = per_token * r["train_tokens"] / r["train_seconds"] / 1e12
    return {"kind": kind, "shape": shape, "r": r, "width": width, "tflops": tflops,
            "mfu": tflops / peak if peak else None,
            "device": record(out, "manifest.json")["device"]}


def resume_check(args, folder: Path, tmp: Path) -> dict:
    """min_cmi stopped by SIGTERM after step `stop` and run again, against the same run
    uninterrupted: (resumed ok, its final dev metrics, the uninterrupted run's)."""
    steps = args.resume_steps
    stop = steps // 2
    common = ["model=bert_base", f"model.name_or_path={folder}", "objective=min_cmi",
              f"train.max_steps={steps}", f"train.eval_every={stop}", "rerun=false"]
    whole = cmift(args, [*common, f"output_dir={tmp / 'whole'}"])
    first = cmift(args, [*common, f"output_dir={tmp / 'cut'}"], {"CMIFT_FAULTS": f"sigterm@{stop}"})
    second = cmift(args, [*common, f"output_dir={tmp / 'cut'}"])
    if whole.returncode or second.returncode:
        sys.exit(f"resume check failed:\n{whole.stderr[-2000:]}\n{second.stderr[-2000:]}")
    resumed, reference = record(tmp / "cut"), record(tmp / "whole")
    log = next((tmp / "cut").rglob("run.log")).read_text()
    return {"interrupted": first.returncode != 0 and "interrupted at step" in log,
            "resumed_line": next((x for x in log.splitlines() if "resumed from" in x), ""),
            "resumed": resumed, "reference": reference}


def study_hours(rates: dict) -> list[tuple[str, float]]:
    """The paper's studies in GPU-hours, from the measured training examples/s (every example
    costing what an MRPC example costs here; evaluation left out): 3 epochs on 90% of each
    training set (the selection split), 3 seeds; min_cmi adds a no-grad pass over the training
    set (counted as a third of an epoch); each student's teacher logits one no-grad pass."""
    examples = 0.9 * sum(GLUE_TRAIN.values())
    bert, distil = rates["bert_base"], rates["distilbert"]
    seeds, epochs = 3, 3
    ce = seeds * epochs * examples / bert
    min_cmi_run = seeds * (epochs + 1 / 3) * examples / bert
    teacher_pass = seeds * (1 / 3) * examples / bert
    student = seeds * epochs * examples / distil
    comparison1 = ce + 3 * min_cmi_run  # ce, min_cmi at 3 lam
    # teachers: ce and max_cmi at 2 lam; students: kd at T 2, 4 and max_cmi_kd at 2 lam x 2 T
    comparison2 = ce + 2 * min_cmi_run + 3 * teacher_pass + 6 * student
    return [("paper_min_cmi (BERT-base; ce + min_cmi at 3 lam; 8 tasks, 3 seeds)",
             comparison1 / 3600),
            ("paper_max_cmi_kd (3 BERT-base teachers, 6 DistilBERT students; 8 tasks, 3 seeds)",
             comparison2 / 3600)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_glue_dir(ap)
    ap.add_argument("--kit", type=Path, help="bench/gpu_kit.sh's folder: glue/ and tokenizer/")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--samples", type=int, help="first N MRPC examples (a dry run on a CPU)")
    ap.add_argument("--resume-steps", type=int, default=60, help="the resume check's length")
    ap.add_argument("--peak-tflops", type=float, help="default: looked up from the device name")
    ap.add_argument("--out", default=str(REPORT))
    args = ap.parse_args()
    if args.kit is not None:
        args.glue_dir = str(args.kit / "glue")
    os.environ.setdefault("CMIFT_CACHE", tempfile.mkdtemp(prefix="cmift-cache-"))

    import torch

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "cpu (no CUDA device: no MFU)"
    peak = args.peak_tflops or (peak_tflops(device) if cuda else None)
    runs, shapes = {}, {}
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        for kind in MODELS:
            folder = tmp / f"random-{kind}"
            shapes[kind] = write_random(folder, kind, tokenizer_folder(args.kit))
            runs[kind] = speed(args, kind, folder, shapes[kind], peak, tmp)
            print(f"{kind}: {runs[kind]['r']['train_examples_per_second']:.0f} ex/s", flush=True)
        resume = resume_check(args, tmp / "random-bert_base", tmp)
    rows = [("date", time.strftime("%Y-%m-%d")), ("device", runs["bert_base"]["device"]),
            ("run", f"MRPC train ({runs['bert_base']['r']['train_examples']} examples over "
                    f"{args.epochs} epoch(s), batch {args.batch_size}), max length 128, "
                    "length-grouped batches, random weights of each model's shape")]
    table = ["| model | parameters (non-embedding) | training examples/s | padded tokens/s | "
             "model TFLOP/s | MFU (dense bf16 peak) | peak memory |", "|---" * 7 + "|"]
    for kind, run in runs.items():
        r, shape = run["r"], run["shape"]
        mfu = f"{100 * run['mfu']:.1f}% of {peak:.0f}" if run["mfu"] is not None else "n/a"
        memory = ", ".join(f"{k} {v:.0f} MB" for k, v in r["peak_memory_mb"].items())
        params = f"{shape['params'] / 1e6:.1f}M ({shape['non_embedding_params'] / 1e6:.1f}M)"
        table.append(f"| {kind} | {params} | "
                     f"{r['train_examples_per_second']:.0f} | "
                     f"{r['train_tokens'] / r['train_seconds']:.0f} | {run['tflops']:.1f} | "
                     f"{mfu} | {memory} |")
    bert_mfu = runs["bert_base"]["mfu"]
    goal = ("n/a (no CUDA device)" if bert_mfu is None else
            f"{100 * bert_mfu:.1f}%: {'met' if bert_mfu >= 0.4 else '**not met**'} (goal >= 40%)")
    res, ref = resume["resumed"], resume["reference"]
    hours = study_hours({k: runs[k]["r"]["train_examples_per_second"] for k in runs})
    text = "\n".join([
        SECTION, "", "Written by `python bench/gpu_bert_base.py`.", "",
        "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], "", *table, "",
        f"BERT-base MFU at batch 32, length-grouped: {goal}.", "",
        "CUDA paths: bf16 autocast, TF32, fused AdamW and pinned non_blocking copies ran in every "
        "row above (cmift's CUDA defaults). A min_cmi run (BERT-base shape, feature-space "
        f"centroids on the GPU) stopped by SIGTERM after step {args.resume_steps // 2} "
        f"({'interrupted as asked' if resume['interrupted'] else 'NOT interrupted'}) and run "
        f"again: status {res['status']}, \"{resume['resumed_line'].rsplit(': ', 1)[-1]}\"; "
        f"final dev loss {res['final']['loss']:.6f} against {ref['final']['loss']:.6f} "
        f"uninterrupted (accuracy {res['final']['accuracy']:.4f} / "
        f"{ref['final']['accuracy']:.4f}).", "",
        "The paper's studies at these rates (GPU-hours on this card; every example costing an "
        "MRPC example; evaluation left out):", "",
        "| study | GPU-hours |", "|---|---|", *[f"| {k} | {v:.1f} |" for k, v in hours], ""])
    print(text)
    if cuda:
        replace_section(Path(args.out), SECTION, text)
    else:
        print(f"(no CUDA device: {args.out} left unchanged)")


if __name__ == "__main__":
    main()
