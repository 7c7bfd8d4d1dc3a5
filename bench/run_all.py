"""`make bench`: every performance measurement of cmift, written to docs/PERFORMANCE.md.

Also the CPU's limit (bench/cpu_limit.py) and a whole study's cost (bench/study_cost.py); the
GPU section (bench/gpu_bert_base.py, on a CUDA machine) is kept as it is.

Training measurements run one process each, in alternating order (odd rounds in list order,
even rounds reversed), all on the same model (minilm_l6), data (real MRPC train, first N
examples), batch size 32, max length 128 and number of steps (one epoch). Each process reports
its own training time (model loading and tokenization excluded), evaluation examples/s on the
whole MRPC dev set, and its peak memory. Ratios are taken between medians of the same run.

min_cmi's goals are ratios to the ce run measured next to it, and one round's ratio moves by
about +-10% on this host: ce and the two min_cmi rows run --paired-rounds rounds (default 5),
the other rows --rounds.

  python bench/run_all.py --glue-dir ../shared/glue [--samples 1024] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

from benchlib import OFFLINE_ENV, REPO, add_training_args, split_section, write_report
from cpu_limit import measure as cpu_limit
from gpu_bert_base import SECTION as GPU_SECTION
from study_cost import measure as study_cost
from summarize_runs import make_runs


@dataclass
class Measurement:
    name: str
    kind: str  # "cmift" | "trainer"
    args: list[str]
    results: list[dict] = field(default_factory=list)

    def median(self, key: str) -> float:
        return median(r[key] for r in self.results)


PAIRED = 3  # ce and min_cmi's two rows: the paired goals' measurements
MEASUREMENTS = [
    # min_cmi's rows right after ce's: their goals are ratios of one round's neighbours
    Measurement("cmift ce", "cmift", ["objective=ce"]),
    Measurement("cmift min_cmi, output space", "cmift",
                ["objective=min_cmi", "objective.cmi.space=output"]),
    Measurement("cmift min_cmi, feature space", "cmift", ["objective=min_cmi"]),
    # (the rows above run --paired-rounds rounds, the rows below --rounds)
    Measurement("cmift min_cmi, feature space, whole-set init", "cmift",
                ["objective=min_cmi", "objective.cmi.init_samples=null"]),
    Measurement("HF Trainer (run_glue recipe)", "trainer", []),
    Measurement("cmift ce, group_by_length=false", "cmift",
                ["objective=ce", "train.group_by_length=false"]),
    Measurement("HF Trainer, group_by_length=True", "trainer", ["--group-by-length"]),
    Measurement("kd student, cached teacher logits", "student", ["objective=kd"]),
    Measurement("kd student, live teacher", "student",
                ["objective=kd", "distillation.teacher_logits=live"]),
]


def schedule(rounds: int, paired_rounds: int) -> list[list[Measurement]]:
    """Each round's measurements in the order they run: every row for `rounds` rounds, ce and
    min_cmi's rows up to `paired_rounds`; odd rounds top to bottom, even rounds reversed, so
    that each min_cmi run always has a ce run next to it."""
    rounds_of = [MEASUREMENTS if r < rounds else MEASUREMENTS[:PAIRED]
                 for r in range(max(rounds, paired_rounds))]
    return [rows if r % 2 == 0 else rows[::-1] for r, rows in enumerate(rounds_of)]


def cmift_command(args, overrides: list[str], out: Path) -> list[str]:
    # recipe=run_glue: the peer's lr (2e-5); cmift's MiniLM default is the tuned 1e-4
    return [sys.executable, "-m", "cmift", "task=mrpc", "model=minilm_l6", "recipe=run_glue",
            f"data.glue_dir={args.glue_dir}", f"data.max_train_samples={args.samples}",
            "train.epochs=1", "train.save_model=false", f"train.batch_size={args.batch_size}",
            f"output_dir={out}", "rerun=true", *overrides]


def run_checked(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=OFFLINE_ENV)
    if proc.returncode:
        sys.exit(f"benchmark command failed ({proc.returncode}): {' '.join(cmd)}\n"
                 f"{proc.stderr[-3000:]}")


WARMUP_STEPS = 8  # the first steps pay one-time costs (allocations, kernel set-up)


def run_record(out: Path) -> tuple[dict, list[dict]]:
    """(metrics.json, steps.jsonl rows) of the one run under `out` (the teacher left out)."""
    (path,) = [p for p in out.rglob("metrics.json") if "teachers" not in p.parts]
    steps = [json.loads(x) for x in (path.parent / "steps.jsonl").read_text().splitlines()]
    return json.loads(path.read_text()), steps


def steady_step_ms(steps: list[dict]) -> float:
    """Mean step time after the warm-up steps, from the steps' training-time stamps."""
    done = steps[WARMUP_STEPS - 1]
    return 1000 * (steps[-1]["seconds"] - done["seconds"]) / (steps[-1]["step"] - done["step"])


def measure(m: Measurement, args, work: Path) -> dict:
    """One process; returns its train / eval examples per second, step time and peak memory."""
    if m.kind == "trainer":
        result = work / "hf.json"
        run_checked([sys.executable, str(REPO / "bench" / "hf_run_glue.py"), "--task", "mrpc",
                     "--glue-dir", args.glue_dir, "--max-train-samples", str(args.samples),
                     "--epochs", "1", "--batch-size", str(args.batch_size), "--eval", "end",
                     "--out", str(result), *m.args])
        r = json.loads(result.read_text())
        steps = -(-args.samples // args.batch_size)
        return {"train_eps": r["train_examples_per_second"],
                "step_ms": 1000 * r["train_seconds"] / steps, "steady_ms": None, "pass_s": 0.0,
                "tokens": r["train_tokens"] / args.samples,
                "eval_eps": r["eval_examples_per_second"],
                "rss_mb": r["peak_memory_mb"]["host_rss"]}
    # students share one teacher (trained before the rounds); other runs start from nothing
    out = work / "distil" if m.kind == "student" else work / "run"
    run_checked(cmift_command(args, m.args, out))
    r, steps = run_record(out)
    shutil.rmtree(out / "mrpc")  # the run, not the shared teacher
    return {"train_eps": r["train_examples_per_second"],
            "step_ms": 1000 * (r["train_seconds"] - r["pass_seconds"]) / r["steps"],
            "steady_ms": steady_step_ms(steps),
            "pass_s": r["pass_seconds"], "eval_eps": r["eval_examples_per_second"],
            "tokens": r["train_tokens"] / r["train_examples"],
            "rss_mb": r["peak_memory_mb"]["host_rss"]}


def wall_time(cmd: list[str], repeats: int, ok_codes=(0,)) -> float:
    """Median wall seconds from process start to exit."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=OFFLINE_ENV)
        times.append(time.perf_counter() - start)
        if proc.returncode not in ok_codes:
            sys.exit(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return median(times)


def console_script(name: str, module_call: str) -> list[str]:
    found = shutil.which(name)
    return [found] if found else [sys.executable, "-c", module_call]


def cli_timings(repeats: int) -> dict[str, float]:
    cmift = console_script("cmift", "from cmift.cli import main; main()")
    return {
        "python -c pass (interpreter start, reference)": wall_time([sys.executable, "-c", "pass"],
                                                                   repeats),
        "cmift --help": wall_time([*cmift, "--help"], repeats),
        "cmift task=nope (config error, exit 2)": wall_time([*cmift, "task=nope"], repeats,
                                                            ok_codes=(2,)),
    }


def summary_timings(work: Path, runs: int, repeats: int) -> dict[str, float]:
    root = work / "runs"
    make_runs(root, runs)
    table = console_script("cmift-table", "from cmift.cli import table_main; table_main()")
    return {
        f"cmift-table on {runs} runs (tables and plots)": wall_time([*table, str(root)], repeats),
        f"cmift-table on {runs} runs --no-plots": wall_time([*table, str(root), "--no-plots"],
                                                            repeats),
    }


# ----- the report -------------------------------------------------------------------------------
def machine() -> dict[str, str]:
    import datasets
    import torch
    import transformers

    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kb = int(Path("/proc/meminfo").read_text().split()[1])
        memory = f"{mem_kb / 2**20:.0f} GiB"
    except OSError:
        memory = "?"
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip() or "?"
    return {"date": time.strftime("%Y-%m-%d"), "cpu": f"{cpu}, {os.cpu_count()} cores",
            "memory": memory, "gpu": gpu, "torch threads": str(torch.get_num_threads()),
            "python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "datasets": datasets.__version__,
            "cmift commit": commit}


def goal_rows(by_name: dict[str, Measurement], cli: dict, summary: dict) -> list[list[str]]:
    def eps(name):
        return by_name[name].median("train_eps")

    def step(name):
        return by_name[name].median("steady_ms")

    rows = []

    def add(goal, value, target, met):
        rows.append([goal, value, target, "met" if met else "**not met**"])

    ratio = eps("cmift ce") / eps("HF Trainer (run_glue recipe)")
    add("cmift ce / HF Trainer, training examples/s", f"{ratio:.2f}x", ">= 1.2x", ratio >= 1.2)

    def paired(name, over):
        """Per-round ratios of `name` to ce (measured next to each other in every round) and
        their median, as a % overhead: pairs cancel the machine's drift between rounds."""
        ratios = [over(m, c) for m, c in zip(by_name[name].results, by_name["cmift ce"].results)]
        return 100 * (median(ratios) - 1), ", ".join(f"{100 * (r - 1):+.1f}" for r in ratios)

    def slower_steps(m, c):
        return m["steady_ms"] / c["steady_ms"]

    def longer_run(m, c):  # training time, no-grad passes included: examples/s, inverted
        return c["train_eps"] / m["train_eps"]

    for space, limit in (("output", 5), ("feature", 10)):
        over, rounds = paired(f"cmift min_cmi, {space} space", slower_steps)
        add(f"min_cmi ({space} space) step-time overhead vs ce (steps {WARMUP_STEPS + 1}+; "
            f"median of rounds {rounds})", f"{over:+.1f}%", f"<= {limit}%", over <= limit)
    for space in ("output", "feature"):  # the init pass at its default, a 128-example sample
        total, rounds = paired(f"cmift min_cmi, {space} space", longer_run)
        add(f"min_cmi ({space} space) whole-run time vs ce, centroid init pass included "
            f"(median of rounds {rounds})", f"{total:+.1f}%", "<= +10%", total <= 10)
    total, rounds = paired("cmift min_cmi, feature space, whole-set init", longer_run)
    rows.append(["min_cmi (feature space) whole-run time vs ce, init over the whole training "
                 f"set (init_samples=null, the papers' and the studies' pass; rounds {rounds})",
                 f"{total:+.1f}%", "(for reference)", ""])

    def tokens_per_second(name):  # padded tokens: the work, whatever the batches' make-up
        return median(r["train_eps"] * r["tokens"] for r in by_name[name].results)

    for ours, peer, what in (
            ("cmift ce, group_by_length=false", "HF Trainer (run_glue recipe)", "plain"),
            ("cmift ce", "HF Trainer, group_by_length=True", "length-grouped")):
        rows.append([f"cmift ce / HF Trainer, both {what} batches: training examples/s",
                     f"{eps(ours) / eps(peer):.2f}x", "(for reference)", ""])
        rows.append([f"cmift ce / HF Trainer, both {what} batches: padded tokens/s",
                     f"{tokens_per_second(ours) / tokens_per_second(peer):.2f}x",
                     "(for reference)", ""])
    kd = eps("kd student, cached teacher logits") / eps("kd student, live teacher")
    add("kd student: cached / live teacher, training examples/s", f"{kd:.2f}x", ">= 1.4x",
        kd >= 1.4)
    for name, seconds in cli.items():
        if name.startswith("cmift"):
            add(f"`{name}` wall time", f"{seconds:.2f} s", "< 1.5 s", seconds < 1.5)
    for name, seconds in summary.items():
        add(f"`{name}` wall time", f"{seconds:.2f} s", "< 5 s", seconds < 5)
    return rows


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def report(args, measurements, cli, summary) -> str:
    by_name = {m.name: m for m in measurements}
    info = machine()
    ce_steady = by_name["cmift ce"].median("steady_ms")
    train_rows = []
    for m in measurements:
        per_round = ", ".join(f"{r['train_eps']:.1f}" for r in m.results)
        steady = None if m.results[0]["steady_ms"] is None else m.median("steady_ms")
        train_rows.append([
            m.name, f"{m.median('train_eps'):.2f}", per_round, f"{m.median('step_ms'):.0f}",
            "-" if steady is None else f"{steady:.0f}",
            "-" if steady is None else f"{100 * (steady / ce_steady - 1):+.1f}%",
            f"{m.median('pass_s'):.1f}",
            f"{m.median('tokens'):.1f}",
            f"{m.median('eval_eps'):.1f}",
            f"{m.median('rss_mb'):.0f}"])
    parts = [
        "# cmift performance",
        "",
        f"Written by `make bench` (bench/run_all.py) on {info['date']}. Every number below was "
        "measured in that one run; ratios compare medians of the same run, except min_cmi's goals: "
        "the median of each round's ratio to ce, measured next to it.",
        "",
        markdown_table(["", ""], [[k, v] for k, v in info.items()]),
        "",
        "## Goals",
        "",
        markdown_table(["goal", "measured", "target", ""], goal_rows(by_name, cli, summary)),
        "",
        "## Training and evaluation",
        "",
        f"MiniLM-L6 (all-MiniLM-L6-v2), real MRPC train, first {args.samples} examples, batch "
        f"{args.batch_size}, max length 128, one epoch ({-(-args.samples // args.batch_size)} "
        f"optimiser steps), dynamic padding everywhere, fp32. {args.rounds} rounds (ce and "
        f"min_cmi's two rows: {max(args.rounds, args.paired_rounds)}, for min_cmi's paired "
        "goals); one process "
        "per measurement; odd rounds run the rows top to bottom, even rounds bottom to top. "
        "Training time excludes model loading and tokenization and includes the objective's "
        "no-grad passes (min_cmi's centroid initialisation: by default over a seeded sample of "
        "128 training examples, `objective.cmi.init_samples`; the whole-set row passes over "
        "all of them; shown separately; step time excludes it; whether the sample moves dev "
        "results: docs/RESULTS.md, the centroid-initialisation check). The step time after "
        "the first "
        f"{WARMUP_STEPS} steps, from the steps' time stamps in steps.jsonl, leaves out one-time "
        "set-up costs (which min_cmi pays in its init pass, before its first step); the min_cmi "
        "goals use it. Evaluation is the whole MRPC dev set (408 "
        "examples) after training. kd students are layers 0, 2, 4 of MiniLM-L6, distilled "
        "from a MiniLM-L6 ce teacher trained once before the rounds on the same examples.",
        "",
        markdown_table(["measurement", "train ex/s (median)", "per round", "step ms",
                        f"step ms, steps {WARMUP_STEPS + 1}+", "vs ce", "no-grad passes s",
                        "padded tokens / example", "eval ex/s", "peak RSS MB"],
                       train_rows),
        "",
        "## Command line",
        "",
        f"Wall time from process start to exit, median of {args.repeats}.",
        "",
        markdown_table(["command", "seconds"], [[k, f"{v:.2f}"] for k, v in
                                                {**cli, **summary}.items()]),
        "",
    ]
    return "\n".join(parts)


def gpu_section(path: Path) -> str:
    """The GPU section already in the report (written by bench/gpu_bert_base.py), kept as is."""
    _, section, _ = split_section(path.read_text() if path.is_file() else "", GPU_SECTION)
    if section is not None:
        return section
    return (f"{GPU_SECTION}\n\nNot measured yet: no CUDA device was available. On one, run "
            "`python bench/gpu_bert_base.py` (BERT-base on MRPC: examples/s and MFU against the "
            "card's bf16 peak); it fills in this section.\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_training_args(ap, rounds=3)
    ap.add_argument("--paired-rounds", type=int, default=5,
                    help="rounds of ce and the two min_cmi rows (their goals are paired ratios)")
    ap.add_argument("--repeats", type=int, default=5, help="for the command-line timings")
    args = ap.parse_args()
    if not (Path(args.glue_dir) / "MRPC" / "train.tsv").is_file():
        sys.exit(f"--glue-dir {args.glue_dir!r} has no MRPC/train.tsv (the GLUE TSV layout)")

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print("command-line timings ...", flush=True)
        cli = cli_timings(args.repeats)
        summary = summary_timings(work, 1000, max(1, args.repeats // 2))
        print("training the kd teacher (not timed) ...", flush=True)
        run_checked(cmift_command(args, ["objective=kd"], work / "distil"))
        shutil.rmtree(work / "distil" / "mrpc")
        for r, order in enumerate(schedule(args.rounds, args.paired_rounds)):
            for m in order:
                result = measure(m, args, work)
                m.results.append(result)
                print(f"round {r + 1} {m.name:38s} train {result['train_eps']:6.2f} ex/s, "
                      f"step {result['step_ms']:5.0f} ms, eval {result['eval_eps']:6.1f} ex/s, "
                      f"RSS {result['rss_mb']:.0f} MB", flush=True)
    out = Path(args.out)
    print("the CPU's limit: GEMM rate, achieved FLOP/s, one step's profile ...", flush=True)
    limit = cpu_limit(args)
    print("a study's cost: the MRPC slice by cmift -m and by Trainer scripts ...", flush=True)
    text = "\n".join([report(args, MEASUREMENTS, cli, summary), limit, study_cost(args),
                      gpu_section(out)])
    write_report(out, text)
    print(text)


if __name__ == "__main__":
    main()
