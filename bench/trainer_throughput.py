"""Benchmark: cmift `ce` training throughput against HF Trainer (run_glue recipe), same run.

Same model (minilm_l6), data (real MRPC train, first N examples), batch size, max length and
number of steps; dynamic padding on both; one process per measurement, alternating order.
Each side reports its own training-loop examples/s (model loading, tokenization and
evaluation excluded). Prints every measurement and the ratio cmift / Trainer.

  python bench/trainer_throughput.py --glue-dir ../shared/glue [--samples 1024] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parent.parent


def run_cmift(args, out: Path) -> float:
    cmd = [sys.executable, "-m", "cmift", "task=mrpc", "model=minilm_l6", "objective=ce",
           f"data.glue_dir={args.glue_dir}", f"data.max_train_samples={args.samples}",
           "data.max_eval_samples=32", "train.epochs=1", "train.save_model=false",
           f"train.batch_size={args.batch_size}", f"output_dir={out}", "rerun=true"]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)
    (metrics,) = out.rglob("metrics.json")
    return json.loads(metrics.read_text())["train_examples_per_second"]


def run_trainer(args, out: Path) -> float:
    result = out / "hf.json"
    cmd = [sys.executable, str(REPO / "bench" / "hf_run_glue.py"), "--task", "mrpc",
           "--glue-dir", args.glue_dir, "--max-train-samples", str(args.samples),
           "--epochs", "1", "--batch-size", str(args.batch_size), "--no-eval",
           "--out", str(result)]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)
    return json.loads(result.read_text())["train_examples_per_second"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR", str(REPO.parent / "shared" /
                                                                       "glue")))
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    results: dict[str, list[float]] = {"cmift": [], "trainer": []}
    runners = {"cmift": run_cmift, "trainer": run_trainer}
    for r in range(args.rounds):
        order = ["cmift", "trainer"] if r % 2 == 0 else ["trainer", "cmift"]
        for name in order:
            with tempfile.TemporaryDirectory() as tmp:
                eps = runners[name](args, Path(tmp))
            results[name].append(eps)
            print(f"round {r + 1} {name:8s} {eps:7.2f} train examples/s", flush=True)
    c, t = median(results["cmift"]), median(results["trainer"])
    print(f"median: cmift {c:.2f}, HF Trainer {t:.2f} examples/s; ratio cmift/Trainer "
          f"{c / t:.3f}")


if __name__ == "__main__":
    main()
