"""Sweeps end to end with the tiny model: failures recorded and the sweep goes on, re-running
skips finished runs, parallel and SLURM-style launchers, then the table."""

import json
import math
import os
import re
import subprocess
import sys

import pytest
from forked import run as run_cli

from conftest import compose

TINY = ["model=tiny", "train.max_steps=4", "data.max_train_samples=64",
        "data.max_eval_samples=32", "train.batch_size=16"]


def cmift(*args, cwd, faults="", **kw):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CMIFT_FAULTS": faults}
    return subprocess.Popen([sys.executable, "-m", "cmift", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def finish(proc, timeout=600):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def statuses(root):
    found = {}
    for path in root.rglob("metrics.json"):
        if "teachers" not in path.parts:
            found[str(path.parent.relative_to(root))] = json.loads(path.read_text())["status"]
    return found


def test_sweep_records_failures_goes_on_then_skips_finished(glue_dir, tmp_path):
    args = ["-m", "task=mrpc,rte", "objective=min_cmi", "objective.cmi.lam=0.1,-1", "seed=1,2",
            *TINY, f"data.glue_dir={glue_dir}", f"output_dir={tmp_path}/out"]
    code, out, err = finish(cmift(*args, cwd=tmp_path))
    assert code == 1, err[-2000:]
    found = statuses(tmp_path / "out")
    assert sorted(found.values()) == ["failed"] * 4 + ["ok"] * 4
    assert "4 run(s) of the sweep failed" in err and "objective.cmi.lam=-1.0" in err
    failed = [k for k, v in found.items() if v == "failed"]
    assert all("objective.cmi.lam=-1" in k for k in failed)
    # every job logs, not only the first (Hydra's per-job logging config must not mute them)
    assert (out + err).count("done in") == 4
    for k, v in found.items():
        if v == "ok":
            assert "done in" in (tmp_path / "out" / k / "run.log").read_text()

    # the same sweep again trains nothing: finished runs are skipped
    code, out, err = finish(cmift(*args, cwd=tmp_path))
    assert out.count("skipped") == 4 and "eval step" not in out + err

    table = run_cli([sys.executable, "-c", "from cmift.cli import table_main;"
                            "table_main()", str(tmp_path / "out"), "--no-plots"],
                           capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    md = (tmp_path / "out" / "tables" / "glue.md").read_text()
    assert "MRPC (f1/accuracy)" in md and "RTE (accuracy)" in md and "±" in md
    assert "(n=2) [lam=0.1,beta=0.0] {smoke: max_steps 4; subset: train 64; subset: dev 32} " \
        "+2 failed" in md


def test_the_same_settings_typed_differently_find_the_finished_run(glue_dir, tmp_path):
    """A directory's name keeps the overrides as typed; its hash is the settings. Repeating a
    default on the command line (in another spelling) must find the finished run, not train a
    second copy of it in a new directory."""
    common = ["task=mrpc", *TINY, f"data.glue_dir={glue_dir}", f"output_dir={tmp_path}/out"]
    assert finish(cmift("seed=1", *common, cwd=tmp_path))[0] == 0
    code, out, err = finish(cmift("seed=1", "train.lr=0.00002", *common, cwd=tmp_path))
    assert code == 0 and "already finished ok; skipped" in out, out + err[-2000:]
    assert len(statuses(tmp_path / "out")) == 1
    # a different value is a different run, in a directory of its own
    assert finish(cmift("seed=1", "train.lr=3e-5", *common, cwd=tmp_path))[0] == 0
    assert sorted(statuses(tmp_path / "out").values()) == ["ok", "ok"]


def test_interrupted_sweep_resumes_without_redoing_finished_runs(glue_dir, tmp_path):
    common = ["task=mrpc", *TINY, f"data.glue_dir={glue_dir}", f"output_dir={tmp_path}/out"]
    args = ["-m", "seed=1,2,3", *common]
    assert finish(cmift("seed=1", *common, cwd=tmp_path))[0] == 0  # the sweep's first run
    # Ctrl-C at a known step of the sweep's second run (the first is skipped: it takes no step)
    code, out, err = finish(cmift(*args, cwd=tmp_path, faults="sigint@2"))
    assert code != 0 and "interrupted" in err
    found = statuses(tmp_path / "out")
    done = [k for k, v in found.items() if v == "ok"]
    assert len(done) == 1 and "seed=1" in done[0] and len(found) == 2  # seed 3 never started
    mtimes = {k: (tmp_path / "out" / k / "metrics.json").stat().st_mtime_ns for k in done}
    plan = finish(cmift(*args, "plan=true", cwd=tmp_path))[1]
    assert "cmift: plan: 3 runs: 1 finished, 1 partial, 1 to run" in plan
    code, out, err = finish(cmift(*args, cwd=tmp_path))
    assert code == 0, err[-2000:]
    assert out.count("skipped") == 1
    assert sorted(statuses(tmp_path / "out").values()) == ["ok"] * 3
    assert all((tmp_path / "out" / k / "metrics.json").stat().st_mtime_ns == t
               for k, t in mtimes.items())


def test_plan_lists_a_sweeps_runs_and_writes_nothing(glue_dir, tmp_path):
    """plan=true: one line per distinct run (ce is one run under a lam sweep) and a summary;
    no run directory, record or multirun.yaml appears or changes."""
    common = ["task=mrpc", *TINY, f"data.glue_dir={glue_dir}", f"output_dir={tmp_path}/out"]
    assert finish(cmift("objective=ce", *common, cwd=tmp_path))[0] == 0
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, out, err = finish(cmift("-m", "objective=ce,min_cmi", "objective.cmi.lam=0.1,1",
                                  *common, "plan=true", cwd=tmp_path))
    assert code == 0, err[-2000:]
    lines = [line for line in out.splitlines() if line.startswith("cmift: plan: ")]
    assert len(lines) == 4 and lines[-1] == "cmift: plan: 3 runs: 1 finished, 2 to run"
    assert sum("finished" in line and "/ce/" in line for line in lines) == 1
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    # a plan of runs that do not exist yet leaves no folder behind
    finish(cmift("-m", "seed=7,8", *common[:-1], f"output_dir={tmp_path}/new", "plan=true",
                 cwd=tmp_path))
    assert not (tmp_path / "new").exists()
    # nor does a single run's plan
    code, out, _ = finish(cmift(*common[:-1], f"output_dir={tmp_path}/one", "plan=true",
                                cwd=tmp_path))
    assert code == 0 and "cmift: plan: to run" in out
    assert not (tmp_path / "one").exists()


def test_joblib_launcher_runs_jobs_in_parallel(glue_dir, tmp_path):
    code, out, err = finish(cmift("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                                  "seed=1,2", *TINY, f"data.glue_dir={glue_dir}",
                                  f"output_dir={tmp_path}/out", cwd=tmp_path))
    assert code == 0, err[-2000:]
    assert sorted(statuses(tmp_path / "out").values()) == ["ok", "ok"]
    manifests = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("manifest.json")]
    assert {m["torch_threads"] for m in manifests} == {max(1, (os.cpu_count() or 1) // 2)}


def test_submitit_launcher_configs_compose():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    cfg = compose("hydra/launcher=submitit_slurm", "hydra.launcher.partition=gpu",
                  return_hydra=True)
    assert cfg.hydra.launcher.partition == "gpu"
    assert "SlurmLauncher" in cfg.hydra.launcher._target_


def test_submitit_local_sweep(glue_dir, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    code, out, err = finish(cmift("-m", "hydra/launcher=submitit_local", "seed=1,2", *TINY,
                                  f"data.glue_dir={glue_dir}", f"output_dir={tmp_path}/out",
                                  cwd=tmp_path))
    assert code == 0, err[-2000:]
    assert sorted(statuses(tmp_path / "out").values()) == ["ok", "ok"]


def test_parallel_students_share_one_teacher(glue_dir, tmp_path):
    code, out, err = finish(cmift("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                                  "objective=kd", "distillation.kd.temperature=1,4", *TINY,
                                  f"data.glue_dir={glue_dir}", f"output_dir={tmp_path}/out",
                                  cwd=tmp_path))
    assert code == 0, err[-2000:]
    students = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("metrics.json")
                if "teachers" not in p.parts]
    assert sorted(s["teacher"]["reused"] for s in students) == [False, True]
    assert len({s["teacher"]["key"] for s in students}) == 1
    assert len(list((tmp_path / "out" / "teachers").rglob("train_logits.npy"))) == 1


def test_a_job_returns_its_selection_score_for_sweepers():
    from cmift.runs.scores import run_score

    evals = [{"step": 1, "dev": {"score": 0.9}, "selection": {"score": 0.6}},
             {"step": 2, "dev": {"score": 0.5}, "selection": {"score": 0.7}}]
    assert run_score({"status": "ok", "evals": evals}) == 0.7  # selection, never dev
    assert run_score({"status": "ok", "evals": [{"step": 1, "dev": {"score": 0.4}}]}) == 0.4
    assert run_score({"status": "failed", "evals": evals}) == -math.inf  # the worst: goes on


def test_optuna_search_maximises_the_selection_score_and_resumes(glue_dir, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper")
    args = ["-m", "hparams_search=mrpc_optuna", *TINY, "hydra.sweeper.n_trials=3",
            "hydra.sweeper.sampler.n_startup_trials=2", f"data.glue_dir={glue_dir}",
            f"output_dir={tmp_path}/search"]
    code, out, err = finish(cmift(*args, cwd=tmp_path))
    assert code == 0, err[-2000:]
    records = [json.loads(p.read_text()) for p in (tmp_path / "search").rglob("metrics.json")]
    assert len(records) == 3 and {r["objective"] for r in records} == {"min_cmi"}, out + err
    scores = [r["evals"][-1]["selection"]["score"] for r in records if r["evals"]]
    best = float(re.search(r"Best value: (\S+)", out + err).group(1))
    assert best == pytest.approx(max(scores))
    # again: the seeded sampler proposes the same trials, which are skipped with their scores
    code, out2, err2 = finish(cmift(*args, cwd=tmp_path))
    assert code == 0 and (out2 + err2).count("already finished ok; skipped") == 3
    assert float(re.search(r"Best value: (\S+)", out2 + err2).group(1)) == best
