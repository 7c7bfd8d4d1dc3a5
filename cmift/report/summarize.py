"""Runs -> one tidy DataFrame -> GLUE tables (Markdown, LaTeX, CSV) and plots.

Every metrics.json under the given folders becomes one row. A *method* is a model, objective,
distillation loss and student, plus any other setting that varies between its runs; its
*hyperparameter* (lam for CMI objectives, the distillation knobs for students) is chosen per
task by the best dev mean over seeds. Cells are mean +- std over seeds, in points, with the
number of seeds; missing and failed runs are shown, never dropped.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from cmift.config.spec import find
from cmift.data.tasks import TASKS, split_suffix
from cmift.runs.files import METRICS_FILE, TABLES_DIR, TEACHERS_DIR

# Settings that never define a method: what is averaged over, and the task's own data.
NOT_METHOD = {"seed", "task.name"}
NOT_METHOD_PREFIXES = ("data.fingerprint.",)


def hparam_keys(objective: str, distillation: str) -> list[str]:
    """The knobs chosen per task on the dev set: what the specs of the run's objective and (when
    it distils) its distillation loss say the tables tune."""
    spec = find("objective", objective)
    if spec is None:
        return []
    keys = list(spec.tuned)
    loss = find("distillation", distillation) if spec.distils else None
    return keys + list(loss.tuned if loss else ())


def short_names(keys: list[str]) -> dict[str, str]:
    """Knob labels for table cells: the leaf name (lam), or namespace.leaf when two collide."""
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: leaf if leaves.count(leaf) == 1 else ".".join(k.split(".")[-2:])
            for k, leaf in zip(keys, leaves)}


def official_metrics(task: str) -> list[str]:
    """Metric column names of a task's official GLUE numbers (MNLI: matched and mismatched)."""
    t = TASKS[task]
    return [f"{m}{split_suffix(t, s)}" for s in t.dev_splits for m in t.metrics]


def find_runs(folders: list[str], include_teachers: bool = False) -> list[Path]:
    found = []
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            if not include_teachers and TEACHERS_DIR in dirs:
                dirs.remove(TEACHERS_DIR)
            dirs[:] = [d for d in dirs if d not in (TABLES_DIR, ".hydra")]
            if METRICS_FILE in files:
                found.append(Path(root) / METRICS_FILE)
    return sorted(found)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, f"{key}."))
        else:
            out[key] = json.dumps(v) if isinstance(v, list) else v
    return out


def load_runs(folders: list[str], epoch: str = "last") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(runs, evals): one row per run with its config and `epoch` ('last' or 'best') dev
    metrics; and one row per (run, evaluation) with every dev metric, for curves."""
    rows, curves = [], []
    for path in find_runs(folders):
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            rows.append({"run_dir": str(path.parent), "status": "unreadable", "error": str(e)})
            continue
        row = {"run_dir": str(path.parent), "status": m.get("status"), "error": m.get("error"),
               "task": m.get("task"), "model": m.get("model"), "objective": m.get("objective"),
               "distillation": m.get("distillation"), "student": m.get("student"),
               "seed": m.get("seed"), "train_examples_per_second":
                   m.get("train_examples_per_second")}
        row.update({f"cfg.{k}": v for k, v in _flatten(m.get("config", {})).items()})
        chosen = m.get("final" if epoch == "last" else "best") or {}
        row.update({f"dev.{k}": v for k, v in chosen.items()})
        rows.append(row)
        for e in m.get("evals", []):
            curves.append({"run_dir": row["run_dir"], "step": e["step"], "epoch": e["epoch"],
                           **{f"dev.{k}": v for k, v in e["dev"].items()}})
    return pd.DataFrame(rows), pd.DataFrame(curves)


def add_methods(runs: pd.DataFrame) -> pd.DataFrame:
    """Adds `method` (a readable label) and `setting` (the chosen-per-task hyperparameters)."""
    runs = runs.copy()
    if runs.empty:
        return runs.assign(method=[], setting=[])
    for col in ("student", "distillation"):
        runs[col] = runs[col].fillna("")
    runs["method"], runs["setting"] = "", ""
    base = ["model", "objective", "distillation", "student"]
    for _, group in runs.groupby(base, dropna=False, sort=False):
        first = group.iloc[0]
        tuned = hparam_keys(first["objective"], first["distillation"])
        short = short_names(tuned)
        hp = [f"cfg.{k}" for k in tuned]
        cfg_cols = [c for c in group.columns if c.startswith("cfg.") and c not in hp
                    and c[4:] not in NOT_METHOD and not c[4:].startswith(NOT_METHOD_PREFIXES)]
        varying = [c for c in cfg_cols if group[c].astype(str).nunique() > 1]
        label = first["model"] + " " + first["objective"]
        if first["distillation"] not in ("", "none"):
            label += f" ({first['distillation']}"
            label += f" -> {first['student']})" if first["student"] else ")"
        for idx, r in group.iterrows():
            extra = ",".join(f"{c[4:]}={r[c]}" for c in varying)
            runs.at[idx, "method"] = f"{label} [{extra}]" if extra else label
            runs.at[idx, "setting"] = ",".join(f"{short[c[4:]]}={r[c]}" for c in hp
                                               if c in r and pd.notna(r[c]))
    return runs


def task_score(runs: pd.DataFrame) -> pd.Series:
    """GLUE's per-task score of each run: the mean of its official metrics."""
    return runs.get("dev.score", pd.Series(np.nan, index=runs.index))


def select(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (method, task): the setting with the best dev-mean task score over its ok seeds."""
    ok = runs[runs["status"] == "ok"].assign(score=lambda d: task_score(d))
    means = ok.groupby(["method", "task", "setting"])["score"].mean().reset_index()
    best = means.loc[means.groupby(["method", "task"])["score"].idxmax()]
    return best[["method", "task", "setting"]]


def _cell(values: pd.Series) -> str:
    v = values.dropna() * 100
    if v.empty:
        return "—"
    std = v.std(ddof=1) if len(v) > 1 else 0.0
    return f"{v.mean():.1f}±{std:.1f}"


def glue_table(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(display table of strings, numeric table of means) with one row per method."""
    tasks = [t for t in TASKS if t in set(runs["task"].dropna())]
    chosen = select(runs)
    display, numeric = {}, {}
    for method, group in runs.groupby("method", sort=True):
        disp, num = {}, {}
        for task in tasks:
            cell_runs = group[group["task"] == task]
            failed = int((cell_runs["status"] != "ok").sum())
            pick = chosen[(chosen["method"] == method) & (chosen["task"] == task)]
            if pick.empty:
                disp[task] = f"failed×{failed}" if failed else "—"
                num[task] = np.nan
                continue
            setting = pick["setting"].iloc[0]
            sel = cell_runs[(cell_runs["status"] == "ok") & (cell_runs["setting"] == setting)]
            text = "/".join(_cell(sel[f"dev.{m}"]) for m in official_metrics(task)
                            if f"dev.{m}" in sel)
            text += f" (n={len(sel)})"
            if setting:
                text += f" [{setting}]"
            if failed:
                text += f" +{failed} failed"
            disp[task], num[task] = text, float(task_score(sel).mean())
        scores = [num[t] for t in tasks]
        complete = all(not math.isnan(s) for s in scores)
        mean = float(np.nanmean(scores)) * 100 if any(not math.isnan(s) for s in scores) else None
        disp["avg"] = "—" if mean is None else f"{mean:.1f}" + ("" if complete else "*")
        num["avg"] = mean
        display[method], numeric[method] = disp, num
    headers = {t: f"{t.upper()} ({'/'.join(official_metrics(t))})" for t in tasks}
    frame = pd.DataFrame.from_dict(display, orient="index").rename(columns=headers)
    return frame, pd.DataFrame.from_dict(numeric, orient="index")


def delta_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Each method minus the same model's ce, paired by seed on the task score (points)."""
    ok = runs[runs["status"] == "ok"].assign(score=lambda d: task_score(d))
    chosen = select(runs)
    ok = ok.merge(chosen, on=["method", "task", "setting"])
    ce = ok[(ok["objective"] == "ce")].set_index(["model", "task", "seed"])["score"]
    ce = ce[~ce.index.duplicated()]
    table = {}
    for method, group in ok[ok["objective"] != "ce"].groupby("method"):
        cells = {}
        for task, g in group.groupby("task"):
            keys = list(zip(g["model"], g["task"], g["seed"]))
            pairs = [(s, ce[k]) for s, k in zip(g["score"], keys) if k in ce.index]
            if not pairs:
                cells[task] = "no ce pair"
                continue
            d = np.array([a - b for a, b in pairs]) * 100
            std = d.std(ddof=1) if len(d) > 1 else 0.0
            cells[task] = f"{d.mean():+.1f}±{std:.1f} (n={len(d)})"
        table[method] = cells
    frame = pd.DataFrame.from_dict(table, orient="index")
    return frame[[t for t in TASKS if t in frame.columns]].rename(columns=str.upper)


def to_latex(frame: pd.DataFrame) -> str:
    body = frame.reset_index(names="method").to_latex(index=False, escape=True)
    return body.replace("±", r"$\pm$").replace("—", "--").replace("×", r"$\times$")


def write_tables(folders: list[str], out: Path, formats: list[str], epoch: str,
                 plots: bool = True) -> dict:
    """Writes runs.csv and the GLUE / delta tables; returns what it wrote and showed."""
    runs, curves = load_runs(folders, epoch)
    out.mkdir(parents=True, exist_ok=True)
    if runs.empty:
        return {"runs": 0, "files": [], "glue": None, "delta": None}
    runs = add_methods(runs)
    runs.to_csv(out / "runs.csv", index=False)
    glue, _ = glue_table(runs)
    delta = delta_table(runs)
    rule = (f"Cells: {epoch}-epoch dev metrics x100, mean±std over seeds (n = seeds). Each "
            "method's hyperparameter [in brackets] is chosen per task by the best dev mean of "
            "the task score; avg = mean task score over tasks (* = some tasks missing).")
    files = [out / "runs.csv"]
    for name, frame in (("glue", glue), ("delta_vs_ce", delta)):
        if frame.empty:
            continue
        if "md" in formats:
            (out / f"{name}.md").write_text(frame.to_markdown() + f"\n\n{rule}\n")
            files.append(out / f"{name}.md")
        if "tex" in formats:
            (out / f"{name}.tex").write_text(to_latex(frame))
            files.append(out / f"{name}.tex")
        if "csv" in formats:
            frame.to_csv(out / f"{name}.csv")
            files.append(out / f"{name}.csv")
    if plots:
        from cmift.report.plots import write_plots

        files += write_plots(runs, curves, out / "plots")
    return {"runs": len(runs), "files": files, "glue": glue, "delta": delta, "rule": rule}
