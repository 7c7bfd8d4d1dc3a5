"""The honest protocol: a selection split carved from train (stratified, its own seed, the same
for every method and run seed) is evaluated beside dev, and the tables choose on it."""

import json

import numpy as np
from datasets import Dataset, DatasetDict

from cmift.data.tokenized import carve_selection
from cmift.report.summarize import write_tables
from cmift.training.run import run
from conftest import compose


def _raw(n=200):
    labels = [i % 4 == 0 for i in range(n)]  # 25% positives
    return DatasetDict({"train": Dataset.from_dict({"idx": list(range(n)),
                                                    "label": [int(x) for x in labels]})})


def test_selection_split_is_stratified_disjoint_and_fixed():
    a = carve_selection(_raw(), 0.1, seed=0, regression=False)
    b = carve_selection(_raw(), 0.1, seed=0, regression=False)
    sel, train = a["selection"], a["train"]
    assert len(sel) == 20 and len(train) == 180
    assert sum(sel["label"]) == 5  # 10% of each class: 5 of 50 positives, 15 of 150 negatives
    assert not set(sel["idx"]) & set(train["idx"])
    assert sel["idx"] == b["selection"]["idx"]  # the same split every time
    other = carve_selection(_raw(), 0.1, seed=1, regression=False)["selection"]["idx"]
    assert other != sel["idx"]  # data.selection_seed picks another
    assert carve_selection(_raw(), 0.0, 0, False)["train"]["idx"] == list(range(200))


def test_runs_evaluate_the_selection_split_and_pick_best_on_it(glue_dir, tmp_path):
    cfg = compose("model=tiny", "train.max_steps=8", "train.eval_every=4",
                  f"data.glue_dir={glue_dir}", "data.max_train_samples=200",
                  "data.max_eval_samples=32", "data.selection_fraction=0.2")
    record = run(cfg, tmp_path)
    assert all("selection" in e and "score" in e["selection"] for e in record["evals"])
    scores = [e["selection"]["score"] for e in record["evals"]]
    assert record["best"]["step"] == record["evals"][int(np.argmax(scores))]["step"]
    assert record["train_examples"] <= 8 * 32 and record["status"] == "ok"


def _record(root, seed, lam, dev, selection):
    folder = root / f"s{seed}-{lam}"
    folder.mkdir(parents=True)
    ev = {"step": 5, "epoch": 1.0, "dev": {"accuracy": dev, "score": dev},
          "selection": {"accuracy": selection, "score": selection}}
    (folder / "metrics.json").write_text(json.dumps({
        "status": "ok", "task": "rte", "model": "m", "objective": "min_cmi",
        "distillation": "none", "seed": seed, "evals": [ev],
        "overrides": [f"seed={seed}", "experiment=toy_study", f"objective.cmi.lam={lam}",
                      f"output_dir={root}"],
        "final": {"step": 5, "epoch": 1.0, **ev["dev"]}, "best": {"step": 5, **ev["dev"]},
        "config": {"objective": {"name": "min_cmi", "cmi": {"lam": lam, "beta": 0.0}}}}))


def test_tables_choose_on_the_selection_split_not_on_dev(tmp_path):
    for seed in (1, 2):
        _record(tmp_path, seed, 0.1, dev=0.60, selection=0.80)  # better on selection
        _record(tmp_path, seed, 1.0, dev=0.70, selection=0.75)  # better on dev
    out = write_tables([str(tmp_path)], tmp_path / "t", ["md"], "last", plots=False)
    assert out["glue"].loc["m min_cmi", "RTE (accuracy)"] == "60.0±0.0 (n=2) [lam=0.1,beta=0.0]"
    assert "selection split carved from train" in out["rule"]


def test_results_document_is_rebuilt_byte_for_byte(tmp_path):
    from cmift.report.results import write_results

    study = tmp_path / "results" / "cpu" / "toy_study"
    for seed in (1, 2):
        _record(study, seed, 0.1, dev=0.60, selection=0.80)
        _record(study, seed, 1.0, dev=0.70, selection=0.75)
    _record(study / "teachers", 1, 0.0, dev=0.80, selection=0.80)  # no table row; it cost time
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "results_reading.md").write_text("## Reading\n\nHand-written.\n")
    first = write_results(tmp_path / "results", docs / "RESULTS.md")
    second = write_results(tmp_path / "results", docs / "RESULTS.md")
    assert first == second == (docs / "RESULTS.md").read_text()
    assert "## toy_study (cpu)" in first and "Hand-written." in first
    assert "| toy_study (cpu) | 5 |" in first and "| **total** | **5** |" in first  # spent
    # no preset named toy_study: its records gather the seeds only
    assert ("cmift -m experiment=toy_study objective.cmi.lam=0.1 seed=1,2\n"
            "cmift -m experiment=toy_study objective.cmi.lam=1.0 seed=1,2\n") in first
    assert str(tmp_path) not in first
    assert "![score_vs_lam](figures/cpu-toy_study/score_vs_lam.png)" in first


def test_tuning_methods_choose_each_methods_lr_on_the_selection_split(tmp_path):
    """tuning_methods runs the parameter-efficient methods at two lrs, full at one: its tables
    choose the lr per method on the selection split (results.TUNE), never on dev."""
    from cmift.report.load import load_runs
    from cmift.report.methods import add_methods
    from cmift.report.results import TUNE
    from cmift.report.tables import glue_table

    def record(seed, tuning, lr, dev, selection):
        folder = tmp_path / f"{tuning}-{lr}-{seed}"
        folder.mkdir()
        ev = {"step": 5, "epoch": 1.0, "dev": {"accuracy": dev, "score": dev},
              "selection": {"accuracy": selection, "score": selection}}
        (folder / "metrics.json").write_text(json.dumps({
            "status": "ok", "task": "rte", "model": "m", "objective": "ce", "tuning": tuning,
            "distillation": "none", "seed": seed, "evals": [ev],
            "final": {"step": 5, "epoch": 1.0, **ev["dev"]}, "best": {"step": 5, **ev["dev"]},
            "config": {"objective": {"name": "ce"}, "train": {"lr": lr}}}))

    for seed in (1, 2):
        record(seed, "full", 5e-5, dev=0.62, selection=0.60)
        record(seed, "prefix", 5e-5, dev=0.58, selection=0.50)  # better on dev only
        record(seed, "prefix", 5e-3, dev=0.55, selection=0.57)  # better on selection
    runs, _ = load_runs([str(tmp_path)], "last")
    glue, _ = glue_table(add_methods(runs, TUNE["tuning_methods"]))
    cells = glue["RTE (accuracy)"].to_dict()
    assert any(v.startswith("55.0±0.0 (n=2) [lr=0.005]") for v in cells.values()), cells
    assert any(v.startswith("62.0±0.0 (n=2)") for v in cells.values()), cells
    assert not any(v.startswith("58.0") for v in cells.values()), cells
