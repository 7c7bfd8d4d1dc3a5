"""The mixtures multi-task runs trained with: p per task and rule, over seeds (for the results
document and `cmift-table`)."""

from __future__ import annotations

import pandas as pd

from cmift.report.load import display_name


def mixture_table(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (model, objective, rule): each task's proportion as mean±std over the
    finished runs' seeds (n); empty when no run trained on a mixture. `runs`: load_runs'
    rows (a mixture run has one per task, with its `mixture.p`)."""
    if "mixture.p" not in runs:
        return pd.DataFrame()
    ok = runs[(runs["status"] == "ok") & runs["mixture.p"].notna()]
    if ok.empty:
        return pd.DataFrame()
    divergence = ok["mixture.divergence"].map(lambda d: f" ({d})" if isinstance(d, str) else "")
    label = ok["model"] + " " + ok["objective"] + " " + ok["mixture"] + divergence

    def cell(values: pd.Series) -> str:
        n = len(values)
        return f"{values.mean():.3f}" + (f"±{values.std(ddof=1):.3f}" if n > 1 else "") + \
            f" (n={n})"

    order = list(dict.fromkeys(ok["task"]))
    table = ok["mixture.p"].groupby([label, ok["task"]], sort=False).apply(cell).unstack()
    return table[order].rename(columns=display_name)
