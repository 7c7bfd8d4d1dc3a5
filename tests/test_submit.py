"""GLUE test predictions and the leaderboard zip (cmift-submit)."""

import sys
import zipfile
from pathlib import Path

import pandas as pd
from forked import run as run_cli

from cmift.data.tasks import TASKS, load_test
from cmift.report.submit import SUBMISSION, choose_runs


def _runs(rows):
    return pd.DataFrame(rows, columns=["task", "method", "setting", "seed", "status",
                                       "selection.score", "dev.score", "run_dir"])


def test_one_run_per_task_by_the_tables_rule():
    """The setting with the best MEAN selection score wins (not the best single run), then its
    seed with the best selection score; dev never chooses when a selection split exists."""
    runs = _runs([
        ("mrpc", "ce", "lr=1e-4", 1, "ok", 0.90, 0.50, "a"),  # best single run, worse mean
        ("mrpc", "ce", "lr=1e-4", 2, "ok", 0.60, 0.99, "b"),
        ("mrpc", "ce", "lr=2e-5", 1, "ok", 0.80, 0.70, "c"),
        ("mrpc", "ce", "lr=2e-5", 2, "ok", 0.82, 0.60, "d"),
        ("mrpc", "ce", "lr=2e-5", 3, "failed", None, None, "e"),
        ("rte", "ce", "lr=2e-5", 1, "ok", 0.55, 0.50, "f"),
    ])
    chosen = choose_runs(runs, None)
    assert chosen["mrpc"]["run_dir"] == "d" and chosen["rte"]["run_dir"] == "f"
    assert choose_runs(runs, "kd") == {}


def test_glue_test_files_are_read_with_their_own_columns(glue_dir):
    test = load_test(TASKS["mrpc"], glue_dir)
    assert list(test) == ["test"] and set(test["test"]["label"]) == {-1}
    assert test["test"]["idx"][:3] == [0, 1, 2] and test["test"]["text_b"][0]


def test_a_run_predicts_test_and_cmift_submit_zips_it(fake_glue, tmp_path):
    args = ["task=mrpc", "model=tiny", "train.max_steps=3", f"data.glue_dir={fake_glue}",
            f"output_dir={tmp_path}/out", "data.selection_fraction=0.2"]
    for seed in (1, 2):
        proc = run_cli([sys.executable, "-m", "cmift", *args, f"seed={seed}"],
                              capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
    preds = sorted((tmp_path / "out").rglob("predictions_test.tsv"))
    assert len(preds) == 2
    frame = pd.read_csv(preds[0], sep="\t", dtype=str)
    assert list(frame.columns) == ["index", "prediction"] and len(frame) == 30
    assert set(frame["prediction"]) <= {"0", "1"}
    zip_path = tmp_path / "sub" / "glue.zip"
    proc = run_cli([sys.executable, "-m", "cmift.report.submit", f"{tmp_path}/out",
                           "--zip", str(zip_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with zipfile.ZipFile(zip_path) as z:
        assert z.namelist() == ["MRPC.tsv"]
        assert z.read("MRPC.tsv").decode().splitlines()[0] == "index\tprediction"
    missing = [name for _, _, name in SUBMISSION if name != "MRPC.tsv"]
    for name in missing:  # every other leaderboard file is named as missing
        assert f"{name}" in proc.stderr and "MISSING" in proc.stderr
    assert f"1 of {len(SUBMISSION)} files" in proc.stdout


def test_predict_test_false_writes_none(fake_glue, tmp_path):
    proc = run_cli([sys.executable, "-m", "cmift", "task=mrpc", "model=tiny",
                           "train.max_steps=2", f"data.glue_dir={fake_glue}",
                           f"output_dir={tmp_path}", "data.predict_test=false"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert not list(Path(tmp_path).rglob("predictions_test.tsv"))
