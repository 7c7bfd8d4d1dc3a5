"""train.keep_best (the best evaluation's weights are what a run leaves), early stopping, and
cmift-submit --select best."""

import json
import math
import os
import signal
import sys
from pathlib import Path

import pytest
import torch
from forked import run as run_cli
from safetensors.torch import load_file

from cmift.report.submit import build_submission
from cmift.runs.scores import best_index, should_stop

# CI's generated MRPC: the tiny model predicts one class, so every evaluation ties and the
# first is the best: best (step 2) and last (step 12) differ, which is what these tests need.
ARGS = ["task=mrpc", "model=tiny", "train.max_steps=12", "train.eval_every=2",
        "train.batch_size=16", "train.lr=1e-3", "data.selection_fraction=0.2"]


def cmift(args, cwd, faults=""):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CMIFT_FAULTS": faults}
    return run_cli([sys.executable, "-m", "cmift", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def only_record(root: Path) -> tuple[dict, Path]:
    [path] = list(root.rglob("metrics.json"))
    return json.loads(path.read_text()), path.parent


def _eval(step, selection=None, dev=0.5):
    entry = {"step": step, "dev": {"score": dev}}
    if selection is not None:
        entry["selection"] = {"score": selection}
    return entry


def test_best_is_the_first_of_equal_scores_on_selection_never_nan():
    evals = [_eval(1, 0.5, dev=0.9), _eval(2, 0.7), _eval(3, 0.7), _eval(4, math.nan)]
    assert best_index(evals) == 1  # selection, not dev; ties to the earlier; NaN never best
    assert best_index([_eval(1, dev=0.2), _eval(2, dev=0.4)]) == 1  # no selection split: dev
    assert not should_stop(evals, None) and not should_stop(evals, 3)
    assert should_stop(evals, 2) and should_stop(evals, 1)


def test_keep_best_leaves_the_best_evaluations_weights(fake_glue, tmp_path):
    args = [*ARGS, f"data.glue_dir={fake_glue}"]
    last = cmift([*args, f"output_dir={tmp_path}/last"], tmp_path)
    best = cmift([*args, "train.keep_best=true", f"output_dir={tmp_path}/best"], tmp_path)
    assert last.returncode == 0 and best.returncode == 0, best.stderr[-2000:]
    record, run_dir = only_record(tmp_path / "best")
    assert record["best"]["step"] == 2 and record["final"]["step"] == 12
    assert record["weights_step"] == 2 and not record["stopped_early"]
    assert not (run_dir / "checkpoints" / "best-weights.pt").exists()  # cleared at the end
    # the weights at step 2, independently: a run without keep_best killed right after step 2
    killed = cmift([*args, "train.save_every=2", "train.keep_checkpoints=10",
                    f"output_dir={tmp_path}/at2"], tmp_path, faults="sigkill@2")
    assert killed.returncode == -signal.SIGKILL
    [step2] = list((tmp_path / "at2").rglob("step-00000002.pt"))
    at2 = torch.load(step2, weights_only=True)["model"]
    kept = load_file(run_dir / "model" / "model.safetensors")
    _, last_dir = only_record(tmp_path / "last")
    final = load_file(last_dir / "model" / "model.safetensors")
    assert "classifier.weight" in kept and len(kept) > 10
    for name, tensor in kept.items():
        assert torch.equal(tensor, at2[name]), name
    assert not all(torch.equal(t, final[n]) for n, t in kept.items())
    # the dev predictions come from the kept weights: those of step 2 (the selected epoch)
    written = (run_dir / "predictions_validation.tsv").read_text().splitlines()[1:]
    accuracy = sum(line.split("\t")[1] == line.split("\t")[2] for line in written) / len(written)
    assert accuracy == pytest.approx(record["best"]["accuracy"])


def test_early_stopping_stops_and_resumes_to_the_same_end(fake_glue, tmp_path):
    args = [*ARGS, f"data.glue_dir={fake_glue}", "train.early_stopping_patience=2",
            "train.save_every=2"]
    clean = cmift([*args, f"output_dir={tmp_path}/clean"], tmp_path)
    assert clean.returncode == 0, clean.stderr[-2000:]
    record, _ = only_record(tmp_path / "clean")
    # best at step 2; two evaluations without a better one (4, 6) stop it at step 6
    assert [e["step"] for e in record["evals"]] == [2, 4, 6]
    assert record["steps"] == 6 and record["stopped_early"] and record["final"]["step"] == 6
    assert "early stopping at step 6" in clean.stderr
    for fault in ("sigkill@4", "sigkill@6"):  # before the decision, and after its checkpoint
        out = tmp_path / fault.replace("@", "")
        assert cmift([*args, f"output_dir={out}"], tmp_path, faults=fault).returncode \
            == -signal.SIGKILL
        assert cmift([*args, f"output_dir={out}"], tmp_path).returncode == 0
        again, _ = only_record(out)
        assert again["evals"] == record["evals"] and again["steps"] == 6


def test_submit_select_best_takes_only_runs_whose_weights_are_the_best(fake_glue, tmp_path):
    args = [*ARGS, f"data.glue_dir={fake_glue}", f"output_dir={tmp_path}/out"]
    assert cmift(args, tmp_path).returncode == 0
    result = build_submission([f"{tmp_path}/out"], tmp_path / "a.zip", select="best")
    assert "MRPC.tsv" not in result["files"]
    assert "train.keep_best=true" in result["missing"]["MRPC.tsv"]
    assert "MRPC.tsv" in build_submission([f"{tmp_path}/out"], tmp_path / "b.zip")["files"]
    assert cmift([*args, "train.keep_best=true"], tmp_path).returncode == 0
    result = build_submission([f"{tmp_path}/out"], tmp_path / "c.zip", select="best")
    assert "keep_best" in result["files"]["MRPC.tsv"]  # the keep_best run's directory
