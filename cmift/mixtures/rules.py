"""The mixing rules (`mixture=`): specs, knobs and the proportions p over `mixture.tasks`.

  none         single-task training: `task=` is the run's one task
  uniform      p_i = 1 / n
  size         p_i proportional to N_i, task i's training examples (examples-proportional)
  temperature  p_i proportional to N_i^(1/T) (T5, mT5): T = 1 is `size`, large T nears uniform
  taskpgm      TaskPGM's closed-form minimiser over task affinities (taskpgm.py)

Each training batch comes from one task, drawn from p with the run's seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import numpy as np

from cmift.config.spec import (
    POSITIVE_INT,
    ConfigError,
    MethodSpec,
    at_least,
    greater,
    knob,
    register,
    register_knobs,
)


class Divergence(str, Enum):
    jsd = "jsd"  # S = 1 - JSD / ln 2 between the models' distributions, per probe
    pmi = "pmi"  # the pointwise mutual information of the models' agreement


@register_knobs("mixture.temperature")
@dataclass
class TemperatureKnobs:
    t: float = knob(2.0, greater(0))  # T in N_i^(1/T)


@register_knobs("mixture.taskpgm")
@dataclass
class TaskPGMKnobs:
    """`mixture.taskpgm.*`: the energy's weights and how the task affinities are measured."""

    divergence: Divergence = Divergence.jsd
    beta: float = knob(1.0, at_least(0))  # weight of the unary (representativeness) term
    lam: float = knob(1.0, greater(0))  # weight of the pairwise (diversity) term
    ridge: float = knob(1e-5, greater(0))  # added to S's lifted spectrum: S stays invertible
    # probe examples drawn (seeded) from each task's training set; every single-task model
    # reads every probe
    probe_per_task: int = knob(128, POSITIVE_INT)


def _check_tasks(cfg) -> None:
    from cmift.data.tasks import TASKS

    tasks = list(cfg.mixture.tasks)
    if cfg.mixture.name == "none":
        if tasks:
            raise ConfigError(f"mixture.tasks={tasks} is not allowed with mixture=none: set "
                              "mixture=uniform|size|temperature|taskpgm to train on several "
                              "tasks")
        return
    if len(tasks) < 2 or len(set(tasks)) != len(tasks):
        raise ConfigError(f"mixture.tasks={tasks} is not allowed: two or more different tasks, "
                          f"from {sorted(TASKS)}")
    for name in tasks:
        if name not in TASKS:
            raise ConfigError(f"mixture.tasks: {name!r} is not allowed: one of {sorted(TASKS)}")


register(
    MethodSpec("mixture", "none", "single-task training (task=)", check=_check_tasks),
    MethodSpec("mixture", "uniform", "every task equally often", check=_check_tasks),
    MethodSpec("mixture", "size", "tasks in proportion to their training-set sizes",
               check=_check_tasks),
    MethodSpec("mixture", "temperature", "sizes^(1/T), as T5 and mT5 mix",
               reads=("mixture.temperature",), check=_check_tasks),
    MethodSpec("mixture", "taskpgm", "TaskPGM: an energy over single-task models' affinities "
               "(arXiv 2507.12612)", reads=("mixture.taskpgm",), check=_check_tasks),
)


def proportions(rule: str, sizes: list[int], knobs=None) -> np.ndarray:
    """p over the tasks (in `mixture.tasks` order) for a rule that reads only their sizes
    (taskpgm's p is taskpgm.solve's, over the task affinities)."""
    n = np.asarray(sizes, dtype=np.float64)
    if rule == "uniform":
        return np.full(len(n), 1.0 / len(n))
    if rule == "size":
        return n / n.sum()
    if rule == "temperature":
        w = n ** (1.0 / float(knobs.t))
        return w / w.sum()
    raise ValueError(f"no proportions for mixture {rule!r}")
