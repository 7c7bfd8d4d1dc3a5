"""Run directories -> one tidy DataFrame: one row per run (its identity settings as `cfg.*`
columns, and the dev metrics of the evaluation asked for), and one row per evaluation."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from cmift.data.tasks import TASKS, split_suffix
from cmift.runs.files import METRICS_FILE, TABLES_DIR, TEACHERS_DIR


def official_metrics(task: str) -> list[str]:
    """Metric column names of a task's official GLUE numbers, in the leaderboard's order
    (MRPC and QQP: F1 before accuracy; MNLI: matched, then mismatched)."""
    t = TASKS[task]
    order = sorted(t.metrics, key=lambda m: m != "f1")
    return [f"{m}{split_suffix(t, s)}" for s in t.dev_splits for m in order]


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
    """(runs, evals): one row per run with its config, the `epoch` ('last' or 'best') dev
    metrics and, when the run has a selection split, that evaluation's selection score
    (`selection.score`); and one row per (run, evaluation) with every dev metric, for curves."""
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
               # runs from before the dropout group had the checkpoint's own rates
               "dropout": m.get("dropout") or "standard",
               "tuning": m.get("tuning") or "full",  # runs from before the tuning group
               "trainable_parameters": m.get("trainable_parameters"),
               "seed": m.get("seed"), "overrides": m.get("overrides") or [],
               "train_seconds": m.get("train_seconds"),
               "eval_seconds": m.get("eval_seconds"),
               "train_examples_per_second": m.get("train_examples_per_second")}
        row["dropout_sites"] = (m.get("dropout_setup") or {}).get("sites")  # guided's rates
        info = m.get("mixture") if isinstance(m.get("mixture"), dict) else {}
        row["mixture"] = info.get("rule") or m.get("mixture") or "none"
        row.update({f"cfg.{k}": v for k, v in _flatten(m.get("config", {})).items()})
        chosen = m.get("final" if epoch == "last" else "best") or {}
        # the step model/ and the predictions come from (older records: the last)
        row["weights_step"] = m.get("weights_step", (m.get("final") or {}).get("step"))
        same = [e for e in m.get("evals", []) if e.get("step") == chosen.get("step")]
        selection = same[-1].get("selection", {}) if same else {}
        tasks = (m.get("config", {}).get("mixture") or {}).get("tasks") or []
        for task in tasks or [None]:  # a multi-task run: one row per task, as single-task rows
            prefix = f"{task}/" if task else ""
            one = {**row, "task": task or row["task"]}
            if task:  # the task's own data fingerprint, as its single-task runs record it
                fingerprint = m["config"].get("data", {}).get("fingerprint", {}).get(task, {})
                one = {k: v for k, v in one.items() if not k.startswith("cfg.data.fingerprint.")}
                one.update({f"cfg.data.fingerprint.{k}": v
                            for k, v in _flatten(fingerprint).items()})
            one.update({f"dev.{k[len(prefix):]}": v for k, v in chosen.items()
                        if k.startswith(prefix) and "/" not in k[len(prefix):]})
            if f"{prefix}score" in selection:
                one["selection.score"] = selection[f"{prefix}score"]
            if task in info.get("tasks", []):  # the proportion of batches this task had
                one["mixture.p"] = info["p"][info["tasks"].index(task)]
                one["mixture.divergence"] = info.get("divergence")
            rows.append(one)
        for e in m.get("evals", []):
            curves.append({"run_dir": row["run_dir"], "step": e["step"], "epoch": e["epoch"],
                           **{f"dev.{k}": v for k, v in e["dev"].items()}})
    runs = pd.DataFrame(rows)
    for col in [c for c in runs.columns if c.startswith("cfg.")]:  # 50 stays 50, not 50.0
        runs[col] = pd.Series([row.get(col) for row in rows], index=runs.index, dtype=object)
    return runs, pd.DataFrame(curves)


def display_name(task: str) -> str:
    """GLUE's own spelling (CoLA, SST-2, STS-B): the folder name of the original release."""
    return TASKS[task].folder if task in TASKS else task.upper()
