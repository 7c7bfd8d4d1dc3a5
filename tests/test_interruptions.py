"""Interruption at every phase: a fault hook SIGKILLs the process at a named point (the worst
moment: the new file complete but not yet renamed into place), then the same command runs
again. Every case must end with the final metrics of an uninterrupted run, read no half-written
cache, and leave no temp file behind. Also: two sweeps over overlapping configurations at once."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from forked import run as run_cli

from conftest import dev_evals

TINY = ["task=mrpc", "model=tiny", "data.max_train_samples=128", "data.max_eval_samples=48",
        "train.batch_size=16", "train.max_steps=16", "train.eval_every=8", "train.lr=1e-3",
        "train.save_every=4"]
KD = ["objective=kd", "distillation=kd"]

# (point, the fault, extra arguments): one case per phase of a run
POINTS = [
    ("building the tokenised-data cache", "kill@tokenized", []),
    ("training the teacher", "sigkill@6", KD),
    ("writing the teacher's logit cache", "kill@train_logits.npy", KD),
    ("writing a checkpoint", "kill@step-*.pt#2", []),
    ("writing metrics.json", "kill@metrics.json#3", []),
    ("writing predictions", "kill@predictions_*.tsv", []),
    ("writing the final weights", "kill@model", []),
]


def cmift(args, cwd, faults="", module="cmift"):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CMIFT_FAULTS": faults}
    command = [sys.executable, "-m", module] if module == "cmift" else [module]
    return run_cli([*command, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def records(root: Path, teachers: bool = False) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(root.rglob("metrics.json"))
            if teachers or "teachers" not in p.relative_to(root).parts]


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if p.is_file() or p.name.endswith(".tmp")]


@pytest.mark.parametrize("point, fault, extra", POINTS, ids=[p[0] for p in POINTS])
def test_killed_at_a_point_then_rerun_ends_like_an_uninterrupted_run(point, fault, extra,
                                                                      glue_dir, tmp_path):
    args = [*TINY, *extra, f"data.glue_dir={glue_dir}",
            f"data.cache_dir={tmp_path}/cache"]  # a fresh cache: the tokenised data is built
    clean = cmift([*args, f"output_dir={tmp_path}/clean",
                   f"data.cache_dir={tmp_path}/clean_cache"], tmp_path)
    assert clean.returncode == 0, clean.stderr[-2000:]
    killed = cmift([*args, f"output_dir={tmp_path}/out"], tmp_path, faults=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    again = cmift([*args, f"output_dir={tmp_path}/out"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    (reference,), (resumed,) = records(tmp_path / "clean"), records(tmp_path / "out")
    assert resumed["status"] == "ok" and dev_evals(resumed) == dev_evals(reference)
    assert all(r["status"] == "ok" for r in records(tmp_path / "out", teachers=True))
    assert not temp_files(tmp_path / "out"), temp_files(tmp_path / "out")


def test_killed_while_writing_the_tables_then_rerun_writes_the_same_tables(glue_dir, tmp_path):
    for seed in (1, 2):
        proc = cmift([*TINY, f"seed={seed}", f"data.glue_dir={glue_dir}",
                      f"output_dir={tmp_path}/runs"], tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    table = ["--no-plots", f"{tmp_path}/runs"]
    clean = cmift([*table, "--out", f"{tmp_path}/clean"], tmp_path, module="cmift-table")
    assert clean.returncode == 0, clean.stderr[-2000:]
    killed = cmift([*table, "--out", f"{tmp_path}/tables"], tmp_path, faults="kill@glue.md",
                   module="cmift-table")
    assert killed.returncode == -signal.SIGKILL
    assert not (tmp_path / "tables" / "glue.md").exists()  # never a torn table
    again = cmift([*table, "--out", f"{tmp_path}/tables"], tmp_path, module="cmift-table")
    assert again.returncode == 0, again.stderr[-2000:]
    for name in ("glue.md", "glue.tex", "glue.csv", "runs.csv"):
        assert (tmp_path / "tables" / name).read_text() == (tmp_path / "clean" / name).read_text()


def test_the_readme_counts_the_points():
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    n = len(POINTS) + 1  # + the tables
    assert f"{n} interruption points, {n} recovered identically" in readme


def _stopped(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def test_two_sweeps_over_overlapping_configurations_train_each_once(glue_dir, tmp_path):
    """Sweep A (seeds 1,2,3) stops itself in the middle of its seed-1 run (fault hook
    `sigstop@3`: alive, holding the run). Sweep B (seeds 1,2,4) runs meanwhile in the same
    output tree: it skips seed 1, which A is training, and trains 2 and 4. A continues: it
    finishes seed 1, skips seed 2 (finished by B) and trains 3. Every configuration is trained
    once, no duplicate run folder appears, every record and table is whole."""
    base = [*TINY, "train.save_every=null", f"data.glue_dir={glue_dir}",
            f"output_dir={tmp_path}/out"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    logs = {name: open(tmp_path / f"{name}.log", "w") for name in "ab"}
    a = subprocess.Popen([sys.executable, "-m", "cmift", "-m", *base, "seed=1,2,3"],
                         cwd=tmp_path, env={**env, "CMIFT_FAULTS": "sigstop@3"},
                         stdout=logs["a"], stderr=subprocess.STDOUT)
    while a.poll() is None and not _stopped(a.pid):  # wait for a known state, not a clock
        os.sched_yield()
    assert a.poll() is None, (tmp_path / "a.log").read_text()[-2000:]
    b = run_cli([sys.executable, "-m", "cmift", "-m", *base, "seed=1,2,4"],
                       cwd=tmp_path, env=env, stdout=logs["b"], stderr=subprocess.STDOUT,
                       timeout=600)
    os.kill(a.pid, signal.SIGCONT)
    assert a.wait(600) == 0 and b.returncode == 0
    said = {name: (tmp_path / f"{name}.log").read_text() for name in "ab"}
    assert "being trained by another process; skipped" in said["b"]
    assert "already finished ok; skipped" in said["a"]
    found = records(tmp_path / "out")
    assert sorted(r["seed"] for r in found) == [1, 2, 3, 4], said  # no run_2: once each
    assert all(r["status"] == "ok" for r in found)


def test_a_preempted_submitit_job_saves_requeues_and_resumes(glue_dir, tmp_path):
    """The submitit launcher (local executor; SLURM works the same way): the job receives
    submitit's preemption signal right after step 5 (fault hook `sigusr2@5`), saves a checkpoint
    at that step boundary, is requeued by submitit, and the requeued job resumes and ends with
    the dev metrics of an uninterrupted run."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    args = [*TINY, f"data.glue_dir={glue_dir}"]
    clean = cmift([*args, f"output_dir={tmp_path}/clean"], tmp_path)
    assert clean.returncode == 0, clean.stderr[-2000:]
    sweep = cmift(["-m", "hydra/launcher=submitit_local", *args, f"output_dir={tmp_path}/out"],
                  tmp_path, faults="sigusr2@5")
    assert sweep.returncode == 0, sweep.stderr[-2000:]
    (reference,), (resumed,) = records(tmp_path / "clean"), records(tmp_path / "out")
    assert resumed["status"] == "ok" and dev_evals(resumed) == dev_evals(reference)
    (job_log,) = (tmp_path / "out" / ".submitit").rglob("*_log.err")
    said = job_log.read_text()
    assert "preempted; a checkpoint is in" in said and "Requeued job" in said
    assert "step-00000005.pt: step 5" in said  # resumed from the step-boundary checkpoint
