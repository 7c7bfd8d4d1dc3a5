"""GLUE tables: one row per method, one column per task (mean ± std over seeds, n), the best
cell per column marked; and the paired differences to ce with 95% confidence intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from cmift.data.tasks import TASKS
from cmift.report.load import display_name, official_metrics
from cmift.report.methods import as_text, is_baseline, scope, select, task_score


def _cell(values: pd.Series) -> str:
    v = values.dropna() * 100
    if v.empty:
        return "—"
    return f"{v.mean():.1f}" if len(v) == 1 else f"{v.mean():.1f}±{v.std(ddof=1):.1f}"


UNFINISHED = ("running", "interrupted")  # stopped before the end: resumable, not failed


def _not_ok(cell_runs: pd.DataFrame) -> str:
    unfinished = int(cell_runs["status"].isin(UNFINISHED).sum())
    failed = int((cell_runs["status"] != "ok").sum()) - unfinished
    return "".join(f" +{k} {word}" for k, word in ((failed, "failed"),
                                                   (unfinished, "unfinished")) if k)


def _task_cell(cell_runs: pd.DataFrame, setting: str, task: str) -> tuple[str, float]:
    sel = cell_runs[(cell_runs["status"] == "ok") & (cell_runs["setting"] == setting)]
    text = "/".join(_cell(sel[f"dev.{m}"]) for m in official_metrics(task) if f"dev.{m}" in sel)
    text += f" (n={len(sel)})"
    if setting:
        text += f" [{setting}]"
    if note := scope(sel):
        text += f" {{{note}}}"
    return text + _not_ok(cell_runs), float(task_score(sel).mean())


def _short(n: float) -> str:
    """A count in three figures, e.g. 5.3k, 22.7M."""
    return next(f"{n / d:.1f}{u}" for d, u in ((1e9, "G"), (1e6, "M"), (1e3, "k"), (1, ""))
                if n >= d or d == 1)


def _count(group: pd.DataFrame) -> str:
    """A method's trainable parameters, e.g. 5.3k, or their range over its tasks where they
    differ (L-Tuning's label maps grow with each task's label texts: 259.2k-609.4k)."""
    counts = pd.to_numeric(group.get("trainable_parameters"), errors="coerce").dropna()
    if counts.empty or not counts.max():
        return "all" if (group["tuning"] == "full").all() else "—"
    low, high = _short(counts.min()), _short(counts.max())
    return high if low == high else f"{low}-{high}"


def _speed(group: pd.DataFrame, tasks: list[str]) -> str:
    """A method's training examples/s per task, in the table's task order (the median over its
    finished runs; tasks differ in length several-fold, so one number over all would mix
    them), or — for a task without one."""
    ok = group[group["status"] == "ok"]
    eps = pd.to_numeric(ok.get("train_examples_per_second"), errors="coerce")
    medians = (eps[ok["task"] == task].median() for task in tasks)
    return " / ".join("—" if math.isnan(m) else f"{m:.1f}" for m in medians)


def glue_table(runs: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(display table of strings, numeric table of mean task scores x100), one row per method."""
    tasks = [t for t in TASKS if t in set(runs["task"].dropna())]
    chosen = select(runs)
    display, numeric = {}, {}
    for method, group in runs.groupby("method", sort=True):
        disp, num = {}, {}
        for task in tasks:
            cell_runs = group[group["task"] == task]
            pick = chosen[(chosen["method"] == method) & (chosen["task"] == task)]
            if pick.empty:
                disp[task], num[task] = (_not_ok(cell_runs).strip() or "—"), np.nan
                continue
            disp[task], score = _task_cell(cell_runs, pick["setting"].iloc[0], task)
            num[task] = score * 100
        scores = [num[t] for t in tasks]
        done = [s for s in scores if not math.isnan(s)]
        partial = len(done) < len(scores)
        disp["avg"] = "—" if not done else f"{np.mean(done):.1f}" + ("*" if partial else "")
        # a partial average (*) is over fewer tasks: never compared, so never the best
        num["avg"] = np.nan if partial or not done else float(np.mean(done))
        display[method], numeric[method] = disp, num
    if "tuning" in runs and (runs["tuning"] != "full").any():  # parameter-efficient rows
        speed = "train ex/s" + (f" ({' / '.join(display_name(t) for t in tasks)})"
                                if len(tasks) > 1 else "")
        for method, group in runs.groupby("method", sort=True):
            display[method]["trainable"] = _count(group)
            display[method][speed] = _speed(group, tasks)
    headers = {t: f"{display_name(t)} ({'/'.join(official_metrics(t))})" for t in tasks}
    frame = pd.DataFrame.from_dict(display, orient="index").rename(columns=headers)
    means = pd.DataFrame.from_dict(numeric, orient="index").rename(columns=headers)
    return frame, means


def t_interval(diffs: np.ndarray) -> tuple[float, float]:
    """The 95% t interval of the mean, computed as scipy.stats.t.interval does (loc + ppf(q) *
    scale at q = 0.025 and 0.975), with t's quantile from scipy.special: importing scipy.stats
    costs about a second of every table's start."""
    from scipy.special import stdtrit

    sem = diffs.std(ddof=1) / math.sqrt(len(diffs))
    if sem == 0:
        return diffs.mean(), diffs.mean()
    # stats' own tail probabilities, (1 -+ 0.95) / 2, are not exactly 0.025 / 0.975
    return tuple(stdtrit(len(diffs) - 1, q) * sem + diffs.mean() for q in ((1 - 0.95) / 2,
                                                                           (1 + 0.95) / 2))


def paired_delta(diffs: np.ndarray) -> str:
    """'mean [95% CI] W/L of n' for paired differences in points (t interval over seeds)."""
    n = len(diffs)
    wins, losses = int((diffs > 0).sum()), int((diffs < 0).sum())
    text = f"{diffs.mean():+.1f}"
    if n > 1:
        lo, hi = t_interval(diffs)
        text += f" [{lo:+.1f}, {hi:+.1f}]"
    return f"{text} W{wins}/L{losses} of {n}"


def delta_table(runs: pd.DataFrame) -> pd.DataFrame:
    """Each method minus the baseline on the same recipe (model, data and train settings) and
    seed, paired on the task score (points): mean, 95% confidence interval and wins/losses.
    The baseline is ce (standard dropout); in a study of students without ce runs (arXiv
    2502.11258's comparison 2) it is kd, the student of a plain teacher, paired with the same
    student and distillation loss. `frame.attrs` names it (baseline) and the pairing (paired_on)."""
    ok = runs[runs["status"] == "ok"].assign(score=lambda d: task_score(d))
    ok = ok.merge(select(runs), on=["method", "task", "setting"])
    if ok.empty:  # a study whose runs have not finished yet
        return pd.DataFrame()
    # a recipe key the study tunes (tuning_methods' train.lr) is each side's own choice, as a
    # method's knobs are: it pairs nothing, or no method would ever meet its baseline
    recipe_keys = ("cfg.train.", "cfg.data.", "cfg.model.")
    tuned = {c for knobs in ok.get("tuned", pd.Series(dtype=str)) for c in knobs.split(",")
             if c.startswith(recipe_keys)}
    recipe = [c for c in ok.columns if c.startswith(recipe_keys) and c not in tuned]
    ok["recipe"] = ok[recipe].map(as_text).agg("|".join, axis=1) if recipe else ""
    baseline, name, keys = is_baseline(ok), "ce", ["task", "recipe", "seed"]
    paired_on = "model, data, recipe and seed"
    if not baseline.any() and (ok["objective"] == "kd").any():
        baseline, name = ok["objective"] == "kd", "kd"
        keys += ["student", "distillation"]
        paired_on = "model, data, recipe, student and distillation loss and seed"
    if own := sorted(c[len("cfg."):] for c in tuned):
        paired_on += f", but {', '.join(own)} at each side's own choice"
    base = ok[baseline][[*keys, "score"]]
    table = {}
    for method, group in ok[~baseline].groupby("method"):
        cells = {}
        for task, g in group.groupby("task"):
            pairs = g.merge(base, on=keys, suffixes=("", "_base"))
            if pairs.empty:
                cells[task] = f"no {name} pair"
                continue
            cells[task] = paired_delta((pairs["score"] - pairs["score_base"]).to_numpy() * 100)
        table[method] = cells
    frame = pd.DataFrame.from_dict(table, orient="index").fillna("—")  # a task it did not run
    frame = frame[[t for t in TASKS if t in frame.columns]].rename(columns=str.upper)
    frame.attrs.update(baseline=name, paired_on=paired_on)
    return frame


def best_cells(frame: pd.DataFrame, means: pd.DataFrame) -> pd.DataFrame:
    """A boolean mask: the cells with the highest mean score of their column."""
    mask = pd.DataFrame(False, index=frame.index, columns=frame.columns)
    for col in frame.columns:
        if col in means and means[col].notna().sum() > 1:
            mask[col] = means[col] == means[col].max()
    return mask


def to_markdown(frame: pd.DataFrame, mask: pd.DataFrame | None = None) -> str:
    shown = frame.copy()
    if mask is not None:
        shown = shown.where(~mask, "**" + shown.astype(str) + "**")
    # cells are text already formatted: tabulate would re-format number-like ones ("246.0" ->
    # "246") and align them differently from their column
    return shown.to_markdown(disable_numparse=True)


_TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
        "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def _tex(text: str) -> str:
    out = "".join(_TEX.get(ch, ch) for ch in str(text))
    return (out.replace("±", r"$\pm$").replace("—", "--").replace("×", r"$\times$")
            .replace("->", r"$\to$"))


def to_latex(frame: pd.DataFrame, caption: str, label: str,
             mask: pd.DataFrame | None = None) -> str:
    """A complete LaTeX `table` (booktabs), with caption and label; best cells in \\textbf."""
    cells = frame.map(_tex)
    if mask is not None:
        cells = cells.where(~mask, r"\textbf{" + cells + "}")
    cells.index = [_tex(i) for i in cells.index]
    cells.columns = [_tex(c) for c in cells.columns]
    return cells.reset_index(names="method").to_latex(
        index=False, escape=False, caption=_tex(caption), label=label, position="t")
