"""The mixtures multi-task runs trained with: p per task and rule, over seeds (for the results
document and `cmift-table`)."""

from __future__ import annotations

import json

import pandas as pd

from cmift.report.load import display_name, find_runs


def mixture_table(folders: list[str]) -> pd.DataFrame:
    """One row per (model, objective, rule): each task's proportion as mean±std over the
    finished runs' seeds (n); empty when no run trained on a mixture."""
    rows = []
    for path in find_runs(folders):
        try:
            m = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        info = m.get("mixture")
        if m.get("status") != "ok" or not isinstance(info, dict):
            continue
        extra = f" ({info['divergence']})" if info.get("divergence") else ""
        for task, p in zip(info["tasks"], info["p"]):
            rows.append({"mixture": f"{m['model']} {m['objective']} {info['rule']}{extra}",
                         "task": task, "p": p, "seed": m.get("seed")})
    if not rows:
        return pd.DataFrame()
    frame = pd.DataFrame(rows)
    order = list(dict.fromkeys(frame["task"]))

    def cell(values: pd.Series) -> str:
        n = len(values)
        return f"{values.mean():.3f}" + (f"±{values.std(ddof=1):.3f}" if n > 1 else "") + \
            f" (n={n})"

    table = frame.groupby(["mixture", "task"], sort=False)["p"].apply(cell).unstack("task")
    return table[order].rename(columns=display_name)
