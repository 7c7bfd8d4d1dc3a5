"""The command lines that made a study's records, read back from the records themselves.

Each run records the overrides it was started with. Runs whose overrides agree on everything
but the preset's swept keys (its `hydra.sweeper.params`) came from one `cmift -m` command; the
swept keys' values are gathered back into comma lists. Where a run wrote (output_dir) and how
many threads it used never change a result, so they are left out.
"""

from __future__ import annotations

from collections.abc import Iterable

from omegaconf import OmegaConf

from cmift.config.schema import CONF_DIR

_WHERE = ("output_dir", "threads", "hydra.")


def swept_keys(study: str) -> list[str]:
    """The keys conf/experiment/<study>.yaml sweeps, in its order; ['seed'] without a preset."""
    preset = CONF_DIR / "experiment" / f"{study}.yaml"
    if not preset.is_file():
        return ["seed"]
    params = OmegaConf.select(OmegaConf.load(preset), "hydra.sweeper.params") or {}
    return list(params) or ["seed"]


def _ordered(values: set[str]) -> list[str]:
    try:
        return sorted(values, key=float)
    except ValueError:
        return sorted(values)


def command_lines(overrides: Iterable[list[str]], study: str) -> list[str]:
    """One `cmift -m ...` line per group of runs started together, e.g.
    `cmift -m experiment=min_cmi_vs_ce task=mrpc train.lr=0.0001 seed=1,2 objective=ce,min_cmi`."""
    swept = swept_keys(study)
    groups: dict[tuple[str, ...], dict[str, set[str]]] = {}
    for run in overrides:
        fixed, varied = [], {}
        for override in run:
            key, _, value = override.lstrip("+~").partition("=")
            if key.startswith(_WHERE):
                continue
            if key in swept:
                varied[key] = value
            else:
                fixed.append(override)
        fixed.sort(key=lambda o: (not o.startswith("experiment="), o))
        values = groups.setdefault(tuple(fixed), {})
        for key, value in varied.items():
            values.setdefault(key, set()).add(value)
    lines = []
    for fixed, values in sorted(groups.items()):
        sweep = [f"{k}={','.join(_ordered(values[k]))}" for k in swept if k in values]
        lines.append(" ".join(["cmift -m", *fixed, *sweep]))
    return lines
