"""Which runs a table cell may pool, and the hyperparameter chosen per task.

A *method* is a model, objective, distillation loss, student and dropout method, plus every
identity setting
that differs between runs of the same task (null and set count as different): a cell never
pools runs that could differ for any reason but the seed and the tuned hyperparameters. The
*setting* is the tuned knobs' values (from the method specs), chosen per task by the best mean
task score over seeds.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cmift.config.spec import find

# Never define a method: what is averaged over, and which task a run is.
NOT_METHOD = {"cfg.seed", "cfg.task.name"}


def hparam_keys(objective: str, distillation: str) -> list[str]:
    """The knobs chosen per task: what the specs of the run's objective and (when it distils)
    its distillation loss say the tables tune."""
    spec = find("objective", objective)
    if spec is None:
        return []
    loss = find("distillation", distillation) if spec.distils else None
    return list(spec.tuned) + list(loss.tuned if loss else ())


def short_names(keys: list[str]) -> dict[str, str]:
    """Knob labels for table cells: the leaf name (lam), or namespace.leaf when two collide."""
    leaves = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: leaf if leaves.count(leaf) == 1 else ".".join(k.split(".")[-2:])
            for k, leaf in zip(keys, leaves)}


def as_text(value) -> str:
    """A setting as text, with every kind of missing value as 'null'."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "null"
    return str(value)


def _label(first) -> str:
    label = f"{first['model']} {first['objective']}"
    if first["distillation"] not in ("", "none"):
        label += f" ({first['distillation']}"
        label += f" -> {first['student']})" if first["student"] else ")"
    if first["dropout"] == "none":
        label += " without dropout"
    elif first["dropout"] != "standard":
        label += f" +{first['dropout']} dropout"
    if first["tuning"] != "full":
        label += f" +{first['tuning']} tuning"
    if first.get("mixture", "none") != "none":
        label += f" ({first['mixture']} mixture)"
    return label


def _varying(group: pd.DataFrame, tune: tuple[str, ...]) -> tuple[list, list, pd.DataFrame]:
    """(the tuned knobs' columns, the identity settings that differ between the group's runs
    of one task, every setting's value as text) for one method group."""
    first = group.iloc[0]
    hp = [f"cfg.{k}" for k in hparam_keys(first["objective"], first["distillation"]) + list(tune)]
    cols = [c for c in group.columns if c.startswith("cfg.") and c not in hp
            and c not in NOT_METHOD]
    texts = group[cols].map(as_text)
    per_task = texts.groupby(group["task"]).nunique()
    return hp, [c for c in cols if (per_task[c] > 1).any()], texts


def is_baseline(runs: pd.DataFrame) -> pd.Series:
    """The rows of the baseline every method is compared with: ce with standard dropout."""
    return ((runs["objective"] == "ce") & (runs["dropout"] == "standard")
            & (runs.get("tuning", "full") == "full") & (runs.get("mixture", "none") == "none"))


def add_methods(runs: pd.DataFrame, tune: tuple[str, ...] = ()) -> pd.DataFrame:
    """Adds `method` (a readable label) and `setting` (the tuned knobs' values). `tune`: more
    keys chosen per task, e.g. ("train.lr", "train.epochs") when the ce recipe is tuned."""
    runs = runs.copy()
    if runs.empty:
        return runs.assign(method=[], setting=[], tuned=[])
    for col in ("student", "distillation"):
        runs[col] = runs[col].fillna("")
    runs["dropout"] = runs.get("dropout", pd.Series("standard", index=runs.index)).fillna(
        "standard")
    runs["tuning"] = runs.get("tuning", pd.Series("full", index=runs.index)).fillna("full")
    runs["mixture"] = runs.get("mixture", pd.Series("none", index=runs.index)).fillna("none")
    runs["method"], runs["setting"], runs["tuned"] = "", "", ""  # tuned: its knobs' columns
    groups = [group for _, group in runs.groupby(
        ["model", "objective", "distillation", "student", "dropout", "tuning", "mixture"],
        dropna=False, sort=False)]
    found = [_varying(group, tune) for group in groups]
    # a setting that splits some method's rows is named on every row that sets it, so that a
    # method run at one value (say only bf16) does not read as the other rows' default
    split_any = {c for _, varying, _ in found for c in varying}
    for group, (hp, varying, texts) in zip(groups, found):
        first = group.iloc[0]
        short = short_names([c[4:] for c in hp])
        varying = [c for c in texts.columns
                   if c in varying or (c in split_any and group[c].notna().all())]
        for idx in group.index:
            extra = ",".join(f"{c[4:]}={texts.at[idx, c]}" for c in varying)
            runs.at[idx, "method"] = f"{_label(first)} [{extra}]" if extra else _label(first)
            runs.at[idx, "setting"] = ",".join(f"{short[c[4:]]}={as_text(runs.at[idx, c])}"
                                               for c in hp if c in runs)
            runs.at[idx, "tuned"] = ",".join(c for c in hp if c in runs)
    return runs


def task_score(runs: pd.DataFrame) -> pd.Series:
    """GLUE's per-task score of each run: the mean of its official metrics."""
    return runs.get("dev.score", pd.Series(np.nan, index=runs.index))


def selection_score(runs: pd.DataFrame) -> pd.Series:
    """What hyperparameters are chosen by: the selection split's task score where every run of
    the (method, task) has one, else the dev task score (and the tables say so)."""
    sel = runs.get("selection.score", pd.Series(np.nan, index=runs.index))
    full = sel.notna().groupby([runs["method"], runs["task"]]).transform("all")
    return sel.where(full, task_score(runs))


def select(runs: pd.DataFrame) -> pd.DataFrame:
    """Per (method, task): the setting with the best mean selection score over its ok seeds."""
    ok = runs[runs["status"] == "ok"]
    ok = ok.assign(score=selection_score(ok))
    means = ok.groupby(["method", "task", "setting"])["score"].mean().reset_index()
    best = means.loc[means.groupby(["method", "task"])["score"].idxmax()]
    return best[["method", "task", "setting"]]


def selected_on(runs: pd.DataFrame) -> str:
    """Which split the choices were made on, for the rule under the tables."""
    ok = runs[runs["status"] == "ok"]
    if (ok["setting"] == "").all():
        return "no split (nothing is tuned in these runs)"
    if "selection.score" not in ok or ok["selection.score"].isna().all():
        return "dev (no selection split in these runs: choices are optimistic)"
    if ok["selection.score"].notna().all():
        return "the selection split carved from train (data.selection_fraction)"
    return "the selection split where a cell's runs all have one, else dev"


def scope(cell_runs: pd.DataFrame) -> str:
    """'' for runs on the whole data, else what limited them: a smoke run (train.max_steps) or
    a subset (data.max_train_samples / max_eval_samples), labelled in the table cell."""
    notes = []
    for col, name in (("cfg.train.max_steps", "smoke: max_steps"),
                      ("cfg.data.max_train_samples", "subset: train"),
                      ("cfg.data.max_eval_samples", "subset: dev")):
        values = cell_runs[col].dropna().unique() if col in cell_runs else []
        if len(values):
            notes.append(f"{name} {','.join(str(int(v)) for v in sorted(values))}")
    return "; ".join(notes)
