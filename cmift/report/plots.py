"""Figures of a set of runs, each as PDF and PNG: the task score against lam (and against the
distillation temperature) with a band of ±1 std over seeds and the ce baseline as a band,
dev CMI / NCMI across training with seed bands, and guided dropout's rates per layer."""

from __future__ import annotations

import re
from itertools import cycle
from pathlib import Path

import pandas as pd

from cmift.report.load import display_name
from cmift.report.methods import as_text, is_baseline, select, short_names, task_score
from cmift.runs.files import atomic_write


def _save(fig, path: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    paths = [path.with_suffix(".pdf"), path.with_suffix(".png")]
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    else:  # lay out once, not once per file: constrained layout is most of a large figure's time
        fig.get_layout_engine().execute(fig)
        fig.set_layout_engine("none")
    for p in paths:
        # fixed metadata: the same runs give the same bytes
        meta = {"CreationDate": None} if p.suffix == ".pdf" else {"Software": None}
        atomic_write(p, lambda f, p=p, meta=meta: fig.savefig(f, format=p.suffix[1:], dpi=130,
                                                               metadata=meta), binary=True)
    plt.close(fig)
    return paths


def _legend_below(fig, axes) -> None:
    """One legend for all panels, under them: inside a panel it hid the curves, and the
    methods are the same in every panel (figures made with layout="constrained"). A line whose
    seed count differs between panels ("x (n=3)", "x (n=5)") is one entry, "x (n=3-5)"."""
    entries, seeds = {}, {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            counted = re.fullmatch(r"(.*) \(n=(\d+)\)", label)
            name = counted.group(1) if counted else label
            entries.setdefault(name, handle)
            seeds.setdefault(name, set()).update([int(counted.group(2))] if counted else [])
    if entries:
        fig.legend(entries.values(), [_with_seeds(name, seeds[name]) for name in entries],
                   loc="outside lower center", fontsize=7)


def _with_seeds(name: str, counts: set[int]) -> str:
    if not counts:
        return name
    low, high = min(counts), max(counts)
    return f"{name} (n={low})" if low == high else f"{name} (n={low}-{high})"


def _colors(methods) -> dict:
    """method -> one colour in every panel (a panel's own colour cycle would give the same
    method different colours, under one shared legend)."""
    import matplotlib.pyplot as plt

    palette = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {m: palette[i % len(palette)] for i, m in enumerate(sorted(set(methods)))}


def _band(ax, x, mean, std, label, **style):
    line = ax.plot(x, mean, marker="o", label=label, **style)[0]
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2, linewidth=0)


CE_STYLES = [("grey", "--"), ("black", ":"), ("tab:brown", "-."), ("tab:olive", "--")]


def sensitivity_lines(runs: pd.DataFrame, col: str) -> dict[tuple[str, str], pd.DataFrame]:
    """(method, label) -> score mean / std / count per value of `col`: one line per value of
    the method's other tuned knobs (max_cmi_kd against T: one line per lam), so that a point
    never pools runs that differ in a setting; lines with fewer than 2 points are left out."""
    lines = {}
    for method, g in runs.groupby("method"):
        tuned = g["tuned"].iloc[0] if "tuned" in g else ""
        others = [c for c in tuned.split(",") if c and c != col and c in g]
        named = [c for c in others if g[c].map(as_text).nunique() > 1]
        short = short_names([c[4:] for c in named])  # the tables' knob labels
        keys = g[others].map(as_text).agg(",".join, axis=1) if others else pd.Series("", g.index)
        for _, line in g.groupby(keys, sort=True):
            stats = line.groupby(col)["score"].agg(["mean", "std", "count"]).sort_index()
            label = method + ("" if not named else " [" + ",".join(
                f"{short[c[4:]]}={as_text(line[c].iloc[0])}" for c in named) + "]")
            if len(stats) >= 2:
                lines[method, label] = stats
    return lines


def sensitivity(runs: pd.DataFrame, knob: str, xlabel: str, path: Path) -> list[Path]:
    """Task score (x100) against `knob` per method, ce as a horizontal band, one panel a task."""
    col = f"cfg.{knob}"
    ok = runs[runs["status"] == "ok"].assign(score=lambda d: task_score(d) * 100)
    swept = ok[ok[col].notna()] if col in ok else ok.iloc[0:0]
    if swept.empty or swept[col].nunique() < 2:
        return []
    import matplotlib.pyplot as plt

    tasks = sorted(swept["task"].unique())
    rows = len(set(ok["method"]))  # legend lines, under the panels
    colors = _colors(swept["method"])
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(6.4, 4.2 * len(tasks)), 3.4 + 0.16 * rows),
                             squeeze=False, layout="constrained")
    for ax, task in zip(axes[0], tasks):
        styles = {m: cycle(["-", "--", ":", "-."]) for m in colors}  # a method's lines, in order
        # one band per ce method (runs that differ in a setting, e.g. precision, never pool)
        baselines = ok[(ok["task"] == task) & is_baseline(ok)].groupby("method")["score"]
        for (method, ce), (color, dash) in zip(baselines, cycle(CE_STYLES)):
            std = ce.std(ddof=1) if len(ce) > 1 else 0.0
            ax.axhspan(ce.mean() - std, ce.mean() + std, color=color, alpha=0.2, linewidth=0)
            ax.axhline(ce.mean(), color=color, linestyle=dash, label=f"{method} (n={len(ce)})")
        for (method, label), stats in sensitivity_lines(swept[swept["task"] == task],
                                                       col).items():
            _band(ax, stats.index.to_numpy(float), stats["mean"].to_numpy(),
                  stats["std"].fillna(0).to_numpy(), f"{label} (n={stats['count'].max()})",
                  color=colors[method], linestyle=next(styles[method]))
        if (swept[col] > 0).all():
            ax.set_xscale("log")
            values = sorted(swept.loc[swept["task"] == task, col].unique())
            ax.set_xticks(values, [as_text(v) for v in values])  # the swept values, not 2x10^0
            ax.minorticks_off()
        ax.set(title=display_name(task), xlabel=xlabel, ylabel="dev task score")
    _legend_below(fig, axes[0])
    return _save(fig, path)


def curves(runs: pd.DataFrame, evals: pd.DataFrame, path: Path) -> list[Path]:
    """Dev CMI and NCMI per evaluation (epoch), mean ± std over seeds, per method and task, at
    the setting the tables chose."""
    if evals.empty or "dev.cmi" not in evals:
        return []
    # each method at the setting the tables chose for the task (lam values never pool)
    chosen = runs[runs["status"] == "ok"].merge(select(runs), on=["method", "task", "setting"])
    chosen = chosen.assign(method=chosen["method"] + chosen["setting"].map(
        lambda s: f" [{s}]" if s else ""))
    data = evals.merge(chosen[["run_dir", "task", "method"]], on="run_dir")
    if data.empty:
        return []
    import matplotlib.pyplot as plt

    tasks = sorted(data["task"].unique())
    rows, colors = data["method"].nunique(), _colors(data["method"])
    fig, axes = plt.subplots(2, len(tasks), figsize=(max(6.4, 4.2 * len(tasks)), 6 + 0.16 * rows),
                             squeeze=False, layout="constrained")
    for j, task in enumerate(tasks):
        for method, g in data[data["task"] == task].groupby("method"):
            for row, metric in enumerate(("dev.cmi", "dev.ncmi")):
                stats = g.groupby("epoch")[metric].agg(["mean", "std"])
                _band(axes[row][j], stats.index.to_numpy(float), stats["mean"].to_numpy(),
                      stats["std"].fillna(0).to_numpy(), method, color=colors[method])
        axes[0][j].set(title=display_name(task), ylabel="dev CMI (output space)")
        axes[1][j].set(xlabel="epoch", ylabel="dev NCMI")
    _legend_below(fig, axes.ravel())
    return _save(fig, path)


KIND_MARKERS = {"embeddings": "s", "attention_probs": "o", "attention_output": "^",
                "ffn_output": "D"}


def dropout_rates(runs: pd.DataFrame, path: Path) -> list[Path]:
    """Guided dropout's rate per layer and sub-layer kind, one panel per task and method (the
    rates of a method's first run: every run of it reads the same cached Fisher)."""
    if "dropout_sites" not in runs:
        return []
    guided = runs[runs["dropout_sites"].map(lambda s: isinstance(s, list) and len(s) > 0)]
    if guided.empty:
        return []
    import matplotlib.pyplot as plt

    panels = list(guided.groupby(["task", "method"], sort=True))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, ((task, method), g) in zip(axes[0], panels):
        sites = pd.DataFrame(g.iloc[0]["dropout_sites"])
        for kind, k in sites.groupby("kind", sort=False):
            ax.plot(k["layer"], k["p"], marker=KIND_MARKERS.get(kind, "x"), label=kind)
        ax.set(title=f"{display_name(task)}: {method}", xlabel="layer (0 = embeddings)",
               ylabel="dropout p")
        ax.legend(fontsize=6)
    return _save(fig, path)


def write_plots(runs: pd.DataFrame, evals: pd.DataFrame, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    folder.mkdir(parents=True, exist_ok=True)
    figures = [(sensitivity, runs, "objective.cmi.lam", "lam", folder / "score_vs_lam"),
               (sensitivity, runs, "distillation.kd.temperature", "temperature",
                folder / "score_vs_temperature"),
               (curves, runs, evals, folder / "cmi_ncmi_curves"),
               (dropout_rates, runs, folder / "dropout_rates")]
    return [path for paths in _draw_all(figures) for path in paths]


def _draw_all(figures: list[tuple]) -> list[list[Path]]:
    """Each figure drawn in its own forked process where the OS can fork (drawing is
    single-threaded and most of a table's time on a large sweep), else one after another."""
    import multiprocessing as mp
    import os

    workers = min(len(figures), os.cpu_count() or 1)
    if workers < 2 or "fork" not in mp.get_all_start_methods():
        return [fn(*args) for fn, *args in figures]
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("fork")) as pool:
        return list(pool.map(_draw, figures))


def _draw(figure: tuple) -> list[Path]:
    fn, *args = figure
    return fn(*args)
