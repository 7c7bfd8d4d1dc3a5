"""Runs -> one tidy DataFrame -> GLUE tables (Markdown, LaTeX, CSV) and plots.

Every metrics.json under the given folders becomes one row (load.py); runs are grouped into
methods that never pool unlike runs (methods.py); tables and paired deltas are built from them
(tables.py). Missing and failed runs are shown, never dropped.
"""

from __future__ import annotations

from pathlib import Path

from cmift.report.load import load_runs
from cmift.report.methods import add_methods, selected_on
from cmift.report.mixtures import mixture_table
from cmift.report.tables import best_cells, delta_table, glue_table, to_latex, to_markdown
from cmift.runs.files import atomic_write, write_text


def rules(epoch: str, split: str) -> dict[str, str]:
    """What each table's cells are, printed under it."""
    return {
        "glue": (f"Cells: {epoch}-evaluation dev metrics x100 (F1/accuracy on MRPC and QQP), "
                 "mean±std over seeds (n = seeds; one seed: no ±). Each method's tuned knobs "
                 f"[in brackets] are chosen per task by the best mean task score on {split}; "
                 "{subset: ...} "
                 "and {smoke: ...} mark runs on part of the data or a fixed step count. A cell "
                 "never pools runs whose settings differ beyond the seed and the tuned knobs. "
                 "Bold: the best mean per column. avg = mean task score over tasks "
                 "(* = some tasks missing)."),
        "delta": ("Cells: method minus {baseline} with the same {paired_on}, on the task score "
                  "(points): mean over seeds [95% t interval] and wins / losses out of n pairs."),
    }


def write_tables(folders: list[str], out: Path, formats: list[str], epoch: str,
                 plots: bool = True, tune: tuple[str, ...] = ()) -> dict:
    """Writes runs.csv and the GLUE / delta tables; returns what it wrote and showed. `tune`:
    keys chosen per task besides the methods' own (see methods.add_methods)."""
    runs, curves = load_runs(folders, epoch)
    out.mkdir(parents=True, exist_ok=True)
    if runs.empty:
        return {"runs": 0, "files": [], "glue": None, "delta": None, "rule": ""}
    runs = add_methods(runs, tune)
    # every table is written atomically: a kill, or a second sweep writing the same folder,
    # never leaves a torn file
    atomic_write(out / "runs.csv", lambda f: runs.to_csv(f, index=False))
    glue, means = glue_table(runs)
    delta = delta_table(runs)
    base = delta.attrs.get("baseline", "ce")  # kd in a study of students
    tables = {"glue": (glue, best_cells(glue, means), "GLUE dev results"),
              f"delta_vs_{base}": (delta, None, f"Paired difference to {base}"),
              "mixtures": (mixture_table(runs), None, "Multi-task mixtures")}
    text = {**rules(epoch, selected_on(runs)),
            "mixtures": "Proportion of training batches per task, mean±std over seeds (n)."}
    text[f"delta_vs_{base}"] = text.pop("delta").format(baseline=base, paired_on=delta.attrs.get(
        "paired_on", ""))
    files = [out / "runs.csv"]
    for name, (frame, mask, caption) in tables.items():
        if frame.empty:
            continue
        if "md" in formats:
            write_text(out / f"{name}.md", to_markdown(frame, mask) + f"\n\n{text[name]}\n")
            files.append(out / f"{name}.md")
        if "tex" in formats:
            write_text(out / f"{name}.tex", to_latex(frame, f"{caption}. {text[name]}",
                                                     f"tab:{name}", mask))
            files.append(out / f"{name}.tex")
        if "csv" in formats:
            atomic_write(out / f"{name}.csv", lambda f, frame=frame: frame.to_csv(f))
            files.append(out / f"{name}.csv")
    if plots:
        from cmift.report.plots import write_plots

        files += write_plots(runs, curves, out / "plots")
    return {"runs": len(runs), "files": files, "glue": glue, "delta": delta,
            "mixtures": tables["mixtures"][0], "rule": text["glue"]}
