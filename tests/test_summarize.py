"""Tables from hand-made run directories: exact cells, hyperparameter selection, deltas."""

import json
import os
import sys

import pytest
from forked import run as run_cli

from cmift.report.summarize import write_tables
from conftest import REPO


def make_run(root, task, objective, seed, metrics, lam=None, status="ok", model="m",
             dropout=None, distil="none", **data):
    folder = root / task / objective / model / f"seed={seed},lam={lam},{dropout},{distil},{data}"
    folder.mkdir(parents=True)
    config = {"task": {"name": task}, "model": {"name": model}, "seed": seed,
              "objective": {"name": objective}, "train": {"epochs": 3},
              "data": {"max_seq_length": 128, **data}}
    if dropout:  # standard dropout is absent from identities, as before the group existed
        config["dropout"] = {"name": dropout}
    if objective not in ("ce", "kd"):  # as in real records: an identity holds what it reads
        config["objective"]["cmi"] = {"lam": lam or 0.0, "beta": 0.0}
    if distil != "none":  # a student (layers of the teacher backbone)
        config["distillation"] = {"name": distil}
    score = sum(metrics.values()) / len(metrics)
    record = {"schema_version": 1, "status": status, "task": task, "model": model,
              "objective": objective, "distillation": distil, "seed": seed, "config": config,
              **({"student": f"{model}-L0-2"} if distil != "none" else {}),
              **({"dropout": dropout} if dropout else {}),
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
    make_run(tmp_path, "rte", "min_cmi", 3, {"accuracy": 0.1}, lam=0.1, status="running")
    return tmp_path


def test_glue_table_cells_selection_and_missing(runs):
    out = write_tables([str(runs)], runs / "tables", ["md", "tex", "csv"], "last", plots=False)
    glue = out["glue"]
    assert list(glue.columns) == ["CoLA (matthews_correlation)", "MRPC (f1/accuracy)",
                                  "RTE (accuracy)", "avg"]
    ce, cmi = glue.loc["m ce"], glue.loc["m min_cmi"]
    assert ce["RTE (accuracy)"] == "81.0±1.4 (n=2)"
    assert ce["MRPC (f1/accuracy)"] == "91.0±1.4/81.0±1.4 (n=2)"
    assert ce["CoLA (matthews_correlation)"] == "—"  # never run: shown missing
    assert cmi["RTE (accuracy)"] == "86.0±1.4 (n=2) [lam=0.1,beta=0.0] +1 unfinished"
    assert cmi["MRPC (f1/accuracy)"] == "93.0±1.4/83.0±1.4 (n=2) [lam=1.0,beta=0.0] +1 failed"
    assert cmi["CoLA (matthews_correlation)"] == "+1 failed"
    assert cmi["avg"] == "87.0*"  # (86 + 88) / 2, and a task is missing
    assert ce["avg"] == "83.5*"


def test_delta_table_pairs_by_seed(runs):
    out = write_tables([str(runs)], runs / "tables", ["md"], "last", plots=False)
    delta = out["delta"]
    assert delta.loc["m min_cmi", "RTE"] == "+5.0 [+5.0, +5.0] W2/L0 of 2"
    assert delta.loc["m min_cmi", "MRPC"] == "+2.0 [+2.0, +2.0] W2/L0 of 2"  # .87/.89 - .86/.87


def test_students_without_ce_compare_with_the_kd_student(tmp_path):
    """Comparison 2: max_cmi_kd minus kd, paired by seed and distillation loss."""
    for seed, acc in [(1, 0.70), (2, 0.74), (3, 0.71)]:
        for loss, shift in (("kd", 0.0), ("ttm", 0.05)):
            make_run(tmp_path, "rte", "kd", seed, {"accuracy": acc + shift}, distil=loss)
            make_run(tmp_path, "rte", "max_cmi_kd", seed, {"accuracy": acc + shift + 0.01 * seed},
                     lam=0.1, distil=loss)
    out = write_tables([str(tmp_path)], tmp_path / "tables", ["md"], "last", plots=False)
    delta = out["delta"]
    assert delta.attrs["baseline"] == "kd" and (tmp_path / "tables" / "delta_vs_kd.md").is_file()
    assert not (tmp_path / "tables" / "delta_vs_ce.md").exists()
    # the same differences (+1, +2, +3) under each loss; never a kd-vs-ttm pair
    assert set(delta["RTE"]) == {"+2.0 [-0.5, +4.5] W3/L0 of 3"}
    assert len(delta) == 2


def test_dropout_methods_are_rows_and_compare_with_standard_ce(tmp_path):
    for seed, acc in [(1, 0.70), (2, 0.72)]:
        make_run(tmp_path, "rte", "ce", seed, {"accuracy": acc})  # a record from before
        make_run(tmp_path, "rte", "ce", seed, {"accuracy": acc + 0.03}, dropout="guided")
        make_run(tmp_path, "rte", "ce", seed, {"accuracy": acc - 0.01}, dropout="none")
    out = write_tables([str(tmp_path)], tmp_path / "tables", ["md"], "last", plots=False)
    assert sorted(out["glue"].index) == ["m ce", "m ce +guided dropout", "m ce without dropout"]
    assert out["delta"].loc["m ce +guided dropout", "RTE"] == "+3.0 [+3.0, +3.0] W2/L0 of 2"
    assert out["delta"].loc["m ce without dropout", "RTE"] == "-1.0 [-1.0, -1.0] W0/L2 of 2"


def test_files_written_and_runs_csv_is_tidy(runs):
    out = write_tables([str(runs)], runs / "tables", ["md", "tex", "csv"], "best", plots=True)
    names = {p.name for p in out["files"]}
    assert {"runs.csv", "glue.md", "glue.tex", "glue.csv", "delta_vs_ce.md", "score_vs_lam.png",
            "score_vs_lam.pdf", "cmi_ncmi_curves.png", "cmi_ncmi_curves.pdf"} <= names
    tex = (runs / "tables" / "glue.tex").read_text()
    assert r"\pm" in tex and tex.startswith(r"\begin{table}[t]") and r"\caption{" in tex
    assert r"\label{tab:glue}" in tex and tex.rstrip().endswith(r"\end{table}")
    assert r"\textbf{86.0$\pm$1.4 (n=2) [lam=0.1,beta=0.0] +1 unfinished}" in tex  # best RTE
    assert r"m min\_cmi" in tex
    assert "chosen per task" in (runs / "tables" / "glue.md").read_text()
    import pandas as pd

    tidy = pd.read_csv(runs / "tables" / "runs.csv")
    assert len(tidy) == 15 and {"status", "task", "seed", "method", "setting"} <= set(tidy)


def test_cmift_table_cli(runs):
    proc = run_cli([sys.executable, "-c", "from cmift.cli import table_main; table_main()",
                           str(runs), "--format", "md,csv", "--no-plots"],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "GLUE dev" in proc.stdout and (runs / "tables" / "glue.csv").is_file()
    bad = run_cli([sys.executable, "-c", "from cmift.cli import table_main; table_main()",
                          str(runs), "--format", "xls"], capture_output=True, text=True)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0


def test_cells_never_pool_runs_that_differ(tmp_path):
    """A 50-example dev run is not averaged with a full one (null vs set differ)."""
    make_run(tmp_path, "mrpc", "ce", 1, {"accuracy": 0.8, "f1": 0.9})
    make_run(tmp_path, "mrpc", "ce", 2, {"accuracy": 0.6, "f1": 0.7}, max_eval_samples=50)
    glue = write_tables([str(tmp_path)], tmp_path / "t", ["md"], "last", plots=False)["glue"]
    assert sorted(glue.index) == ["m ce [data.max_eval_samples=50]",
                                  "m ce [data.max_eval_samples=null]"]
    subset = glue.loc["m ce [data.max_eval_samples=50]", "MRPC (f1/accuracy)"]
    assert subset == "70.0/60.0 (n=1) {subset: dev 50}"  # one seed: no ±
    assert glue.loc["m ce [data.max_eval_samples=null]", "MRPC (f1/accuracy)"] == \
        "90.0/80.0 (n=1)"
    md = (tmp_path / "t" / "glue.md").read_text()
    assert "**90.0/80.0 (n=1)**" in md and "**70.0" not in md  # the best cell is bold


def test_a_setting_that_splits_one_method_is_named_on_every_row_that_sets_it(tmp_path):
    """ce runs at two max_train_samples, a guided-dropout method run at one of them (on one
    task only): its label names that value; its missing task is '—' in the deltas; a partial
    average (*) is never the bold best."""
    for seed in (1, 2):
        make_run(tmp_path, "mrpc", "ce", seed, {"accuracy": 0.80, "f1": 0.90},
                 max_train_samples=100)
        make_run(tmp_path, "mrpc", "ce", seed, {"accuracy": 0.70, "f1": 0.80},
                 max_train_samples=200)
        make_run(tmp_path, "rte", "ce", seed, {"accuracy": 0.60}, max_train_samples=200)
        make_run(tmp_path, "mrpc", "ce", seed, {"accuracy": 0.90, "f1": 0.95},
                 dropout="guided", max_train_samples=200)
        for task in ("mrpc", "rte"):  # a method that ran both tasks gives the deltas RTE
            make_run(tmp_path, task, "ce", seed, {"accuracy": 0.5, "f1": 0.5}, dropout="none",
                     max_train_samples=200)
    out = write_tables([str(tmp_path)], tmp_path / "t", ["md"], "last", plots=False)
    guided = "m ce +guided dropout [data.max_train_samples=200]"
    assert sorted(out["glue"].index) == [guided, "m ce [data.max_train_samples=100]",
                                         "m ce [data.max_train_samples=200]",
                                         "m ce without dropout [data.max_train_samples=200]"]
    assert out["delta"].loc[guided, "MRPC"] == "+17.5 [+17.5, +17.5] W2/L0 of 2"
    assert out["delta"].loc[guided, "RTE"] == "—"
    assert out["glue"].loc[guided, "avg"] == "92.5*"  # MRPC only
    md = (tmp_path / "t" / "glue.md").read_text()
    assert "**67.5**" in md and "**92.5*" not in md  # complete averages: ce 67.5, none 50


def test_smoke_runs_are_labelled(tmp_path):
    for seed in (1, 2):
        make_run(tmp_path, "rte", "ce", seed, {"accuracy": 0.5 + seed / 100})
    folder = tmp_path / "rte" / "ce" / "m"
    for path in folder.rglob("metrics.json"):
        record = json.loads(path.read_text())
        record["config"]["train"]["max_steps"] = 20
        path.write_text(json.dumps(record))
    glue = write_tables([str(tmp_path)], tmp_path / "t", ["md"], "last", plots=False)["glue"]
    assert glue.loc["m ce", "RTE (accuracy)"] == "51.5±0.7 (n=2) {smoke: max_steps 20}"


def test_paired_delta_has_a_t_interval_and_wins():
    import numpy as np

    from cmift.report.tables import paired_delta

    # mean 2, sd 1, n 3: half-width t(0.975, 2) * 1 / sqrt(3) = 4.3027 * 0.57735 = 2.484
    assert paired_delta(np.array([1.0, 3.0, 2.0])) == "+2.0 [-0.5, +4.5] W3/L0 of 3"
    assert paired_delta(np.array([-1.0])) == "-1.0 W0/L1 of 1"


def test_paired_delta_interval_matches_scipy_stats():
    """The table takes t's quantile from scipy.special (a lighter import): scipy.stats' own
    t.interval gives bit-identical bounds (a bound on a rounding edge prints the same)."""
    import numpy as np
    from scipy import stats

    from cmift.report.tables import t_interval

    rng = np.random.default_rng(0)
    for n in (2, 3, 4, 5, 10, 30):
        for _ in range(50):
            diffs = np.round(rng.normal(0.5, 4.0, n), 1)
            expected = stats.t.interval(0.95, n - 1, loc=diffs.mean(),
                                        scale=diffs.std(ddof=1) / np.sqrt(n))
            assert t_interval(diffs) == tuple(expected)


def test_new_users_two_runs_make_two_rows(glue_dir, tmp_path):
    """The issue's command lines: a full-dev and a 50-example-dev smoke run are two rows."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    base = [sys.executable, "-m", "cmift", "task=mrpc", "model=tiny", "train.max_steps=20",
            f"data.glue_dir={glue_dir}", f"output_dir={tmp_path}/o"]
    for extra in (["seed=1"], ["seed=2", "data.max_eval_samples=50"]):
        proc = run_cli([*base, *extra], env=env, capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
    table = run_cli([sys.executable, "-c", "from cmift.cli import table_main; "
                            "table_main()", f"{tmp_path}/o", "--no-plots"], capture_output=True,
                           text=True)
    assert table.returncode == 0, table.stderr
    md = (tmp_path / "o" / "tables" / "glue.md").read_text()
    assert "(n=2)" not in md and md.count("(n=1)") == 2
    assert "{smoke: max_steps 20}" in md and "subset: dev 50" in md


def test_a_study_with_no_finished_run_yet_gives_empty_tables(tmp_path):
    make_run(tmp_path, "rte", "ce", 1, {"accuracy": 0.5}, status="running")
    out = write_tables([str(tmp_path)], tmp_path / "tables", ["md"], "last", plots=False)
    assert out["delta"].empty


def test_tuned_recipe_is_chosen_on_the_selection_split_not_dev(tmp_path):
    """--tune train.lr: one row per method, the lr chosen by the selection split's score."""
    for lr, dev, sel in [(2e-5, 0.90, 0.60), (1e-4, 0.70, 0.80)]:
        for seed in (1, 2):
            make_run(tmp_path, "rte", "ce", seed, {"accuracy": dev}, lam=lr)
            path = next(tmp_path.glob(f"rte/ce/m/seed={seed},lam={lr},*/metrics.json"))
            record = json.loads(path.read_text())
            record["config"]["train"]["lr"] = lr
            record["evals"][0]["selection"] = {"accuracy": sel, "score": sel}
            record["final"]["step"] = record["best"]["step"] = 10
            path.write_text(json.dumps(record))
    out = write_tables([str(tmp_path)], tmp_path / "tables", ["md"], "last", plots=False,
                       tune=("train.lr",))
    assert list(out["glue"].index) == ["m ce"]
    assert out["glue"].loc["m ce", "RTE (accuracy)"] == "70.0±0.0 (n=2) [lr=0.0001]"
    assert "selection split" in out["rule"]


def test_command_lines_are_read_back_from_the_records():
    """Runs started by one `cmift -m` share everything but the preset's swept keys; a check run
    with an extra override is its own line; where a run wrote is never part of it."""
    from cmift.report.commands import command_lines

    main = [[f"seed={s}", f"objective={o}", f"objective.cmi.lam={lam}",
             "experiment=min_cmi_vs_ce", "task=mrpc", "train.lr=0.0001",
             f"output_dir=/somewhere/{s}", "threads=1"]
            for s in (2, 1, 10) for o, lam in (("ce", 0.01), ("min_cmi", 0.1), ("min_cmi", 1.0))]
    check = [[f"seed={s}", "objective=min_cmi", "objective.cmi.lam=0.1",
              "experiment=min_cmi_vs_ce", "task=mrpc", "train.lr=0.0001",
              "train.precision=bf16"] for s in (1, 2)]
    assert command_lines(main + check, "min_cmi_vs_ce") == [
        "cmift -m experiment=min_cmi_vs_ce task=mrpc train.lr=0.0001 seed=1,2,10 "
        "objective=ce,min_cmi objective.cmi.lam=0.01,0.1,1.0",
        "cmift -m experiment=min_cmi_vs_ce task=mrpc train.lr=0.0001 train.precision=bf16 "
        "seed=1,2 objective=min_cmi objective.cmi.lam=0.1"]
    # no preset of that name: only the seed is gathered
    assert command_lines([["seed=1", "task=rte"], ["seed=2", "task=rte"]], "mine") == [
        "cmift -m task=rte seed=1,2"]


def test_sensitivity_plot_never_pools_unlike_ce_runs(tmp_path, monkeypatch):
    """ce runs that differ in a setting (here precision) are two bands, as they are two rows."""
    import pandas as pd

    from cmift.report import plots

    rows = [{"method": f"m ce [train.precision={p}]", "objective": "ce", "seed": s,
             "dev.score": score + s / 100} for p, score in (("auto", 0.80), ("bf16", 0.70))
            for s in (1, 2)]
    rows += [{"method": "m min_cmi", "objective": "min_cmi", "seed": s,
              "cfg.objective.cmi.lam": lam, "dev.score": 0.75} for s in (1, 2)
             for lam in (0.1, 1.0)]
    runs = pd.DataFrame(rows).assign(status="ok", task="mrpc", dropout="standard",
                                     tuning="full", mixture="none")
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.setdefault("fig", fig) and [])
    plots.sensitivity(runs, "objective.cmi.lam", "lam", tmp_path / "s")
    (ax,) = drawn["fig"].axes
    labels = {line.get_label(): line.get_ydata()[0] for line in ax.get_lines()}
    assert labels["m ce [train.precision=auto] (n=2)"] == pytest.approx(81.5)
    assert labels["m ce [train.precision=bf16] (n=2)"] == pytest.approx(71.5)


def test_cmi_curves_show_each_method_at_its_chosen_setting(tmp_path, monkeypatch):
    import pandas as pd

    from cmift.report import plots

    runs = pd.DataFrame([{"run_dir": f"r{s}-{lam}", "method": "m min_cmi", "seed": s,
                          "setting": f"lam={lam}", "dev.score": score}
                         for s in (1, 2) for lam, score in ((0.1, 0.8), (1.0, 0.7))])
    runs = runs.assign(status="ok", task="mrpc")
    evals = pd.DataFrame([{"run_dir": r, "epoch": e, "dev.cmi": 0.1 * e + (r.endswith("1.0")),
                           "dev.ncmi": 0.5} for r in runs["run_dir"] for e in (1, 2)])
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.setdefault("fig", fig) and [])
    plots.curves(runs, evals, tmp_path / "c")
    lines = drawn["fig"].axes[0].get_lines()
    assert [line.get_label() for line in lines] == ["m min_cmi [lam=0.1]"]
    assert list(lines[0].get_ydata()) == pytest.approx([0.1, 0.2])  # lam 1.0's never pooled in


def test_a_method_has_one_colour_in_every_panel_under_one_legend(tmp_path, monkeypatch):
    """Methods missing from a panel must not shift the others' colours: the legend is shared."""
    import pandas as pd

    from cmift.report import plots

    rows = [{"run_dir": f"{t}-{m}-{s}", "method": m, "task": t, "seed": s, "setting": "",
             "dev.score": 0.8} for t, methods in (("mrpc", "abc"), ("rte", "bc"))
            for m in methods for s in (1, 2)]
    runs = pd.DataFrame(rows).assign(status="ok")
    evals = pd.DataFrame([{"run_dir": r, "epoch": e, "dev.cmi": 0.1 * e, "dev.ncmi": 0.5}
                          for r in runs["run_dir"] for e in (1, 2)])
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.setdefault("fig", fig) and [])
    plots.curves(runs, evals, tmp_path / "c")
    fig = drawn["fig"]
    colours = [{line.get_label(): line.get_color() for line in ax.get_lines()}
               for ax in fig.axes]
    assert colours[0]["b"] == colours[1]["b"] and colours[0]["c"] == colours[1]["c"]
    assert len(fig.legends) == 1 and [t.get_text() for t in fig.legends[0].get_texts()] == \
        ["a", "b", "c"]


def test_the_queue_reads_a_tuning_studys_choice_from_its_finished_grid(tmp_path):
    """studies/chosen_recipe.py: the committed ce_tuning records give the reading's choices;
    a grid with an unfinished run chooses nothing."""
    import shutil

    sys.path.insert(0, str(REPO / "studies"))
    try:
        from chosen_recipe import chosen
    finally:
        sys.path.pop(0)
    records = REPO / "results" / "cpu" / "ce_tuning"
    if not records.is_dir():
        pytest.skip("no committed ce_tuning records in this checkout")
    assert chosen(str(records), "mrpc") == "train.lr=0.0001 train.epochs=5"
    assert chosen(str(records), "wnli") == "train.lr=2e-05 train.epochs=3"
    assert chosen(str(records), "cola", teacher=True) == \
        "distillation.teacher_lr=0.0001 distillation.teacher_epochs=5"
    assert chosen(str(records), "sst2") is None  # not run
    partial = tmp_path / "ce_tuning"
    shutil.copytree(records / "wnli", partial / "wnli")
    [first, *_] = sorted(partial.rglob("metrics.json"))
    record = json.loads(first.read_text())
    first.write_text(json.dumps({**record, "status": "running"}))
    assert chosen(str(partial), "wnli") is None


def test_sensitivity_plot_never_pools_another_knobs_values():
    """score against T for max_cmi_kd at two lam: one line per lam, each point one setting."""
    import pandas as pd

    from cmift.report.plots import sensitivity_lines

    tuned = "cfg.objective.cmi.lam,cfg.distillation.kd.temperature"
    rows = [{"method": "s max_cmi_kd", "tuned": tuned,
             "cfg.objective.cmi.lam": lam, "cfg.distillation.kd.temperature": t, "score": score}
            for lam, t, score in [(0.1, 2.0, 70), (0.1, 4.0, 72), (0.2, 2.0, 60), (0.2, 4.0, 64),
                                  (0.1, 2.0, 74)]]
    lines = sensitivity_lines(pd.DataFrame(rows), "cfg.distillation.kd.temperature")
    assert set(lines) == {("s max_cmi_kd", "s max_cmi_kd [lam=0.1]"),
                          ("s max_cmi_kd", "s max_cmi_kd [lam=0.2]")}
    low = lines["s max_cmi_kd", "s max_cmi_kd [lam=0.1]"]
    assert low["mean"].tolist() == [72.0, 72.0] and low["count"].tolist() == [2, 1]
    assert lines["s max_cmi_kd", "s max_cmi_kd [lam=0.2]"]["mean"].tolist() == [60.0, 64.0]


def test_a_line_with_other_seed_counts_in_other_panels_is_one_legend_entry(tmp_path, monkeypatch):
    """max_cmi_kd on MRPC (5 seeds) and CoLA (3): one legend line "... (n=3-5)", not two."""
    import pandas as pd

    from cmift.report import plots

    rows = [{"method": "m min_cmi", "objective": "min_cmi", "task": task, "seed": s,
             "cfg.objective.cmi.lam": lam, "dev.score": 0.7 + s / 100}
            for task, seeds in (("mrpc", 5), ("cola", 3)) for s in range(1, seeds + 1)
            for lam in (0.1, 1.0)]
    runs = pd.DataFrame(rows).assign(status="ok", dropout="standard", tuning="full",
                                     mixture="none")
    drawn = {}
    monkeypatch.setattr(plots, "_save", lambda fig, path: drawn.setdefault("fig", fig) and [])
    plots.sensitivity(runs, "objective.cmi.lam", "lam", tmp_path / "s")
    fig = drawn["fig"]
    assert sorted(line.get_label() for ax in fig.axes for line in ax.get_lines()) == \
        ["m min_cmi (n=3)", "m min_cmi (n=5)"]  # each panel says its own n
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["m min_cmi (n=3-5)"]


def test_trainable_parameters_that_differ_by_task_show_their_range():
    """lt_prefix's label maps grow with the label texts (SST-2 259,203, RTE 609,411): the
    table says both ends, not the larger alone; equal counts stay one number."""
    import pandas as pd

    from cmift.report.tables import _count

    def group(counts, tuning):
        return pd.DataFrame({"trainable_parameters": counts, "tuning": tuning})

    assert _count(group([259203, 609411, 259203], "lt_prefix")) == "259.2k-609.4k"
    assert _count(group([46850, 46850], "prefix")) == "46.9k"
    assert _count(group([22_713_218, 22_713_218], "full")) == "22.7M"
    assert _count(group([None, None], "full")) == "all"
    assert _count(group([None], "prefix")) == "—"


def test_a_tuned_learning_rate_pairs_each_side_at_its_own_choice(tmp_path):
    """tuning_methods tunes train.lr: ce chooses 2e-5, min_cmi 1e-4 (selection split); the
    paired difference is min_cmi at 1e-4 minus ce at 2e-5 per seed, never 'no ce pair'."""
    def run(objective, seed, lr, dev, sel):
        make_run(tmp_path, "rte", objective, seed, {"accuracy": dev}, lam=lr)
        path = next(tmp_path.glob(f"rte/{objective}/m/seed={seed},lam={lr},*/metrics.json"))
        record = json.loads(path.read_text())
        record["config"]["train"]["lr"] = lr
        record["config"]["objective"].get("cmi", {})["lam"] = 0.1
        record["evals"][0]["selection"] = {"accuracy": sel, "score": sel}
        record["final"]["step"] = record["best"]["step"] = 10
        path.write_text(json.dumps(record))

    for seed in (1, 2, 3):
        run("ce", seed, 2e-5, 0.60 + seed / 100, 0.9)
        run("ce", seed, 1e-4, 0.50, 0.1)
        run("min_cmi", seed, 2e-5, 0.50, 0.1)
        run("min_cmi", seed, 1e-4, 0.70 + seed / 50, 0.9)
    out = write_tables([str(tmp_path)], tmp_path / "tables", ["md"], "last", plots=False,
                       tune=("train.lr",))
    delta = out["delta"]
    # per seed: (0.72 - 0.61, 0.74 - 0.62, 0.76 - 0.63) x 100 = 11, 12, 13
    assert delta.loc["m min_cmi", "RTE"].startswith("+12.0 [") and "W3/L0 of 3" in \
        delta.loc["m min_cmi", "RTE"]
    assert delta.attrs["paired_on"] == \
        "model, data, recipe and seed, but train.lr at each side's own choice"


def test_training_speed_is_per_task_in_the_tables_task_order():
    """RTE's pairs are several times longer than SST-2's sentences: one median over both
    tasks would say neither; each task gets its own median."""
    import pandas as pd

    from cmift.report.tables import _speed

    group = pd.DataFrame({"task": ["sst2", "sst2", "sst2", "rte", "rte", "rte"],
                          "status": ["ok", "ok", "failed", "ok", "ok", "ok"],
                          "train_examples_per_second": [140.0, 112.0, 900.0, 45.0, 8.0, 44.0]})
    assert _speed(group, ["sst2", "rte"]) == "126.0 / 44.0"
    assert _speed(group, ["cola", "rte"]) == "— / 44.0"
