"""`cmift-submit outputs/ --zip glue_submission.zip`: the GLUE leaderboard's files from finished
runs. Per task, one run is chosen by the tables' rule (the method's tuned knobs by the best mean
selection score, on the selection split when the runs have one, else dev), then the seed with
the best selection score; its `predictions_<test split>.tsv` becomes `<TASK>.tsv`
(`index<TAB>prediction`, GLUE's label strings). Tasks without a run or without test predictions
are named, never silently left out.

`--select last` (default) scores runs by their last evaluation, `--select best` by their best
one (as `cmift-table --epoch best`); either way the predictions must come from the weights of
that evaluation, so `--select best` takes runs trained with `train.keep_best=true` (or whose
best evaluation was the last)."""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path

import pandas as pd

from cmift.data.tasks import TASKS
from cmift.report.load import load_runs
from cmift.report.methods import add_methods, selection_score
from cmift.runs.files import atomic_write

ORDER = ["CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv",
         "MNLI-mm.tsv", "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv"]
# the leaderboard's files in its order: (task, test split, file)
SUBMISSION = sorted(((t.name, split, name) for t in TASKS.values()
                     for split, _, _, name in t.test_splits), key=lambda x: ORDER.index(x[2]))


def choose_runs(runs: pd.DataFrame, method: str | None) -> dict[str, pd.Series]:
    """{task: the chosen run}: among finished runs (of `method`), the setting with the best
    mean selection score over seeds, then its seed with the best selection score."""
    ok = runs[runs["status"] == "ok"].copy()
    if method is not None:
        ok = ok[ok["method"] == method]
    ok["chosen_by"] = selection_score(ok)
    chosen = {}
    for task, group in ok.groupby("task"):
        means = group.groupby(["method", "setting"], dropna=False)["chosen_by"].mean()
        if means.dropna().empty:
            continue
        best_method, best_setting = means.idxmax()
        cell = group[(group["method"] == best_method) & (group["setting"] == best_setting)]
        chosen[task] = cell.loc[cell["chosen_by"].idxmax()]
    return chosen


def build_submission(folders: list[str], out_zip: Path, method: str | None = None,
                     select: str = "last") -> dict:
    """Writes the zip; returns {"files": {file: run dir}, "missing": {file: why}}."""
    runs, _ = load_runs(folders, select)
    runs = add_methods(runs) if not runs.empty else runs
    # only runs whose predictions come from the evaluation they are scored by
    matching = runs[runs["weights_step"] == runs["dev.step"]] if not runs.empty else runs
    chosen = choose_runs(matching, method) if not matching.empty else {}
    files, missing = {}, {}
    for task, split, name in SUBMISSION:
        if task not in chosen:
            ok = runs[(runs["task"] == task) & (runs["status"] == "ok")] if not runs.empty \
                else runs
            missing[name] = (f"no {task} run whose weights are its {select} evaluation's "
                             "(train with train.keep_best=true)" if len(ok) and select == "best"
                             else f"no finished {task} run" + (f" of {method}" if method else ""))
            continue
        run_dir = Path(chosen[task]["run_dir"])
        path = run_dir / f"predictions_{split}.tsv"
        if not path.is_file():
            missing[name] = (f"{run_dir} has no {path.name} (no test file, or "
                             "data.predict_test=false)")
            continue
        files[name] = path
    out_zip.parent.mkdir(parents=True, exist_ok=True)

    def write(f) -> None:
        with zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED) as z:
            for name, path in files.items():
                z.write(path, name)

    atomic_write(out_zip, write, binary=True)
    return {"files": {name: str(p.parent) for name, p in files.items()}, "missing": missing}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="cmift-submit", description="GLUE leaderboard files from "
                                 "finished runs (one run per task, chosen as the tables choose)")
    ap.add_argument("folders", nargs="*", default=["outputs"])
    ap.add_argument("--zip", default="glue_submission.zip", help="the zip to write")
    ap.add_argument("--select", choices=["last", "best"], default="last",
                    help="score runs by their last or their best evaluation (best needs runs "
                    "trained with train.keep_best=true)")
    ap.add_argument("--method", default=None, help="only runs of this method (its label in the "
                    "tables, e.g. 'minilm_l6 ce'); default: the best method per task")
    args = ap.parse_args(argv)
    bad = [f for f in args.folders if not Path(f).is_dir()]
    if bad:
        print(f"cmift-submit: error: no such folder: {', '.join(bad)}", file=sys.stderr)
        sys.exit(2)
    result = build_submission(args.folders, Path(args.zip), args.method, args.select)
    for name, run_dir in result["files"].items():
        print(f"{name:12s} {run_dir}")
    for name, why in result["missing"].items():
        print(f"{name:12s} MISSING: {why}", file=sys.stderr)
    print(f"wrote {args.zip}: {len(result['files'])} of {len(SUBMISSION)} files"
          + (f"; the leaderboard needs all {len(SUBMISSION)}" if result["missing"] else ""))


if __name__ == "__main__":
    main()
