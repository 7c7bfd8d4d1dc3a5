"""Benchmark: `cmift-table` over 1,000 generated run directories (goal: under 5 s).

Runs are shaped like real ones (3 evaluations each, full config) over 4 tasks x 5 methods x
10 settings/seeds x 5. Prints seconds, runs/s, and the ratio to the 5 s budget.

  python bench/summarize_runs.py [--runs 1000]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cmift.report.summarize import write_tables  # noqa: E402

TASKS = {"mrpc": ("accuracy", "f1"), "rte": ("accuracy",), "cola": ("matthews_correlation",),
         "sst2": ("accuracy",)}
OBJECTIVES = ["ce", "min_cmi", "cmic", "max_cmi", "kd"]


def make_runs(root: Path, n: int) -> None:
    rng = random.Random(0)
    for i in range(n):
        task = list(TASKS)[i % 4]
        objective = OBJECTIVES[(i // 4) % 5]
        seed, lam = 1 + (i // 20) % 5, [0.01, 0.1, 1.0, 0.3, 3.0][(i // 100) % 5]
        folder = root / task / objective / "minilm_l6" / f"seed={seed},lam={lam}-{i:05d}"
        folder.mkdir(parents=True)
        evals = []
        for e in (1, 2, 3):
            dev = {m: rng.uniform(0.5, 0.9) for m in TASKS[task]}
            dev.update(score=sum(dev.values()) / len(dev), cmi=rng.random(),
                       gamma=rng.random(), ncmi=rng.random(), loss=rng.random())
            evals.append({"step": 100 * e, "epoch": float(e), "dev": dev})
        config = {"task": {"name": task}, "model": {"name": "minilm_l6"}, "seed": seed,
                  "objective": {"name": objective, "cmi": {"lam": lam, "beta": 0.0}},
                  "distillation": {"name": "kd" if objective == "kd" else "none",
                                   "kd": {"temperature": 2.0, "alpha": 0.5}},
                  "train": {"epochs": 3, "lr": 2e-5, "batch_size": 32},
                  "data": {"max_seq_length": 128}}
        (folder / "metrics.json").write_text(json.dumps({
            "schema_version": 1, "status": "ok", "task": task, "model": "minilm_l6",
            "objective": objective, "distillation": config["distillation"]["name"],
            "student": "minilm_l6-L024" if objective == "kd" else None, "seed": seed,
            "config": config, "evals": evals, "final": evals[-1]["dev"],
            "best": max(evals, key=lambda e: e["dev"]["score"])["dev"]}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_runs(root, args.runs)
        for plots in (False, True):
            start = time.perf_counter()
            result = write_tables([str(root)], root / "tables", ["md", "tex", "csv"], "last",
                                  plots=plots)
            seconds = time.perf_counter() - start
            assert result["runs"] == args.runs
            print(f"summarise {args.runs} runs (plots={plots}): {seconds:.2f} s, "
                  f"{args.runs / seconds:.0f} runs/s, {seconds / 5:.2f}x the 5 s budget")


if __name__ == "__main__":
    main()
