"""The ce recipe a tuning study chose for one task, as command-line overrides, so the queue can
run the next study at it without a person reading the table:

  python studies/chosen_recipe.py results/cpu/ce_tuning_sst2 sst2  # train.lr=.. train.epochs=..
  python studies/chosen_recipe.py results/cpu/ce_tuning cola --teacher
      # the same choice as a distillation teacher's own recipe: distillation.teacher_lr=..
      # distillation.teacher_epochs=.. (comparison 2's teachers train at ce_tuning's choice)

The same rule as the tables (cmift.report): the best mean selection-split score over seeds.
Exits 1 (printing nothing) when the study has no finished run of that task or a run of it is
not finished: a partial grid must not choose.
"""

from __future__ import annotations

import sys

from cmift.report.load import load_runs
from cmift.report.methods import add_methods, as_text, select
from cmift.report.results import TUNE

# a tuned key, and where it goes when the choice is a teacher's recipe rather than the run's own
AS_TEACHER = {"train.lr": "distillation.teacher_lr", "train.epochs": "distillation.teacher_epochs"}


def chosen(folder: str, task: str, teacher: bool = False) -> str | None:
    study = folder.rstrip("/").rsplit("/", 1)[-1]
    runs, _ = load_runs([folder], "last")
    if runs.empty:
        return None
    runs = runs[runs["task"] == task]
    if runs.empty or (runs["status"] != "ok").any():
        return None
    keys = TUNE.get(study, ("train.lr", "train.epochs"))
    runs = add_methods(runs, keys)
    pick = select(runs)
    if len(pick) != 1:  # one method per tuning study: anything else is not a recipe choice
        return None
    # the values from a run of the chosen setting, not parsed back from the setting's label
    run = runs[runs["setting"] == pick["setting"].iloc[0]].iloc[0]
    if teacher and not set(keys) <= set(AS_TEACHER):
        return None  # only an lr / epochs choice is a teacher's recipe
    return " ".join(f"{AS_TEACHER[key] if teacher else key}={as_text(run[f'cfg.{key}'])}"
                    for key in keys)


if __name__ == "__main__":
    args = sys.argv[1:]
    teacher = "--teacher" in args
    args = [arg for arg in args if arg != "--teacher"]
    if len(args) != 2:
        sys.exit("usage: python studies/chosen_recipe.py <results/cpu/study> <task> [--teacher]")
    recipe = chosen(args[0], args[1], teacher)
    if recipe is None:
        sys.exit(1)
    print(recipe)
