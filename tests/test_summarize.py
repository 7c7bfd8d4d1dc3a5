"""Tables from hand-made run directories: exact cells, hyperparameter selection, deltas."""

import json
import subprocess
import sys

import pytest

from cmift.report.summarize import write_tables


def make_run(root, task, objective, seed, metrics, lam=None, status="ok", model="m"):
    folder = root / task / objective / model / f"seed={seed},lam={lam}"
    folder.mkdir(parents=True)
    config = {"task": {"name": task}, "model": {"name": model}, "seed": seed,
              "objective": {"name": objective, "cmi": {"lam": lam or 0.0, "beta": 0.0}},
              "distillation": {"name": "none"}, "train": {"epochs": 3}}
    score = sum(metrics.values()) / len(metrics)
    record = {"schema_version": 1, "status": status, "task": task, "model": model,
              "objective": objective, "distillation": "none", "seed": seed, "config": config,
              "evals": [{"step": 10, "epoch": 1.0, "dev": {**metrics, "score": score,
                                                              "cmi": 0.1, "ncmi": 0.2}}]}
    if status == "ok":
        record["final"] = {**metrics, "score": score}
        record["best"] = {**metrics, "score": score}
    else:
        record["error"] = "boom"
    (folder / "metrics.json").write_text(json.dumps(record))


@pytest.fixture()
def runs(tmp_path):
    for seed, acc in [(1, 0.80), (2, 0.82)]:
        make_run(tmp_path, "rte", "ce", seed, {"accuracy": acc})
        make_run(tmp_path, "mrpc", "ce", seed, {"accuracy": acc, "f1": acc + 0.1})
        # lam=0.1 is better on rte (dev mean 0.86), lam=1 on mrpc
        make_run(tmp_path, "rte", "min_cmi", seed, {"accuracy": acc + 0.05}, lam=0.1)
        make_run(tmp_path, "rte", "min_cmi", seed, {"accuracy": acc - 0.05}, lam=1.0)
        make_run(tmp_path, "mrpc", "min_cmi", seed, {"accuracy": acc, "f1": acc}, lam=0.1)
        make_run(tmp_path, "mrpc", "min_cmi", seed, {"accuracy": acc + 0.02, "f1": acc + 0.12},
                 lam=1.0)
    make_run(tmp_path, "mrpc", "min_cmi", 3, {"accuracy": 0.5, "f1": 0.5}, lam=1.0,
             status="failed")
    make_run(tmp_path, "cola", "min_cmi", 1, {"matthews_correlation": 0.3}, lam=1.0,
             status="failed")
    return tmp_path


def test_glue_table_cells_selection_and_missing(runs):
    out = write_tables([str(runs)], runs / "tables", ["md", "tex", "csv"], "last", plots=False)
    glue = out["glue"]
    assert list(glue.columns) == ["COLA (matthews_correlation)", "MRPC (accuracy/f1)",
                                  "RTE (accuracy)", "avg"]
    ce, cmi = glue.loc["m ce"], glue.loc["m min_cmi"]
    assert ce["RTE (accuracy)"] == "81.0±1.4 (n=2)"
    assert ce["MRPC (accuracy/f1)"] == "81.0±1.4/91.0±1.4 (n=2)"
    assert ce["COLA (matthews_correlation)"] == "—"  # never run: shown missing
    assert cmi["RTE (accuracy)"] == "86.0±1.4 (n=2) [lam=0.1,beta=0.0]"
    assert cmi["MRPC (accuracy/f1)"] == "83.0±1.4/93.0±1.4 (n=2) [lam=1.0,beta=0.0] +1 failed"
    assert cmi["COLA (matthews_correlation)"] == "failed×1"
    assert cmi["avg"] == "87.0*"  # (86 + 88) / 2, and a task is missing
    assert ce["avg"] == "83.5*"


def test_delta_table_pairs_by_seed(runs):
    out = write_tables([str(runs)], runs / "tables", ["md"], "last", plots=False)
    delta = out["delta"]
    assert delta.loc["m min_cmi", "RTE"] == "+5.0±0.0 (n=2)"
    assert delta.loc["m min_cmi", "MRPC"] == "+2.0±0.0 (n=2)"  # scores .87/.89 vs .86/.87


def test_files_written_and_runs_csv_is_tidy(runs):
    out = write_tables([str(runs)], runs / "tables", ["md", "tex", "csv"], "best", plots=True)
    names = {p.name for p in out["files"]}
    assert {"runs.csv", "glue.md", "glue.tex", "glue.csv", "delta_vs_ce.md", "score_vs_lam.png",
            "cmi_ncmi_curves.png"} <= names
    assert r"\pm" in (runs / "tables" / "glue.tex").read_text()
    assert "chosen per task" in (runs / "tables" / "glue.md").read_text()
    import pandas as pd

    tidy = pd.read_csv(runs / "tables" / "runs.csv")
    assert len(tidy) == 14 and {"status", "task", "seed", "method", "setting"} <= set(tidy)


def test_cmift_table_cli(runs):
    proc = subprocess.run([sys.executable, "-c", "from cmift.cli import table_main; table_main()",
                           str(runs), "--format", "md,csv", "--no-plots"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "GLUE dev" in proc.stdout and (runs / "tables" / "glue.csv").is_file()
    bad = subprocess.run([sys.executable, "-c", "from cmift.cli import table_main; table_main()",
                          str(runs), "--format", "xls"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
