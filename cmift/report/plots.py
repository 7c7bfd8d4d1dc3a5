"""PNG plots of a set of runs: each task's score against lam and against the distillation
temperature (mean and std over seeds), and dev CMI / NCMI across evaluations per method."""

from __future__ import annotations

from pathlib import Path

import pandas as pd


def _errorbar_plot(runs: pd.DataFrame, knob: str, xlabel: str, path: Path) -> Path | None:
    col = f"cfg.{knob}"
    ok = runs[(runs["status"] == "ok") & runs.get(col, pd.Series(dtype=float)).notna()]
    if col not in runs or ok.empty or ok[col].nunique() < 2:
        return None
    import matplotlib.pyplot as plt

    tasks = sorted(ok["task"].unique())
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for method, g in ok[ok["task"] == task].groupby("method"):
            stats = (g.assign(score=g["dev.score"] * 100).groupby(col)["score"]
                     .agg(["mean", "std"]).reset_index().sort_values(col))
            if len(stats) < 2:
                continue
            ax.errorbar(stats[col], stats["mean"], yerr=stats["std"].fillna(0), marker="o",
                        capsize=3, label=method)
        ax.set_xscale("log" if (ok[col] > 0).all() else "linear")
        ax.set(title=task.upper(), xlabel=xlabel, ylabel="dev task score")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _curves_plot(runs: pd.DataFrame, curves: pd.DataFrame, path: Path) -> Path | None:
    if curves.empty or "dev.cmi" not in curves:
        return None
    import matplotlib.pyplot as plt

    data = curves.merge(runs[runs["status"] == "ok"][["run_dir", "task", "method"]],
                        on="run_dir")
    if data.empty:
        return None
    tasks = sorted(data["task"].unique())
    fig, axes = plt.subplots(2, len(tasks), figsize=(4.5 * len(tasks), 6), squeeze=False)
    for j, task in enumerate(tasks):
        for method, g in data[data["task"] == task].groupby("method"):
            mean = g.groupby("epoch")[["dev.cmi", "dev.ncmi"]].mean()
            axes[0][j].plot(mean.index, mean["dev.cmi"], marker=".", label=method)
            axes[1][j].plot(mean.index, mean["dev.ncmi"], marker=".", label=method)
        axes[0][j].set(title=task.upper(), ylabel="dev CMI")
        axes[1][j].set(xlabel="epoch", ylabel="dev NCMI")
        axes[0][j].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(runs: pd.DataFrame, curves: pd.DataFrame, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    folder.mkdir(parents=True, exist_ok=True)
    made = [_errorbar_plot(runs, "objective.cmi.lam", "lam", folder / "score_vs_lam.png"),
            _errorbar_plot(runs, "distillation.kd.temperature", "temperature",
                           folder / "score_vs_temperature.png"),
            _curves_plot(runs, curves, folder / "cmi_ncmi_curves.png")]
    return [p for p in made if p is not None]
