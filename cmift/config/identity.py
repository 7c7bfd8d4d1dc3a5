"""Run identity: the settings a run actually reads, and a fingerprint of the data it reads.

A run's directory is derived from it: readable (task/objective/model/seed and the overrides)
plus a hash. Different settings never share a directory; the same settings map to the same one,
which is what makes re-running a command resume or skip it. Left out: settings that cannot
change a result (`knob(identity=False)`), the knob namespaces of methods the run does not use
(the specs say which it reads), and knobs at their legacy value (added later, at the value that
computes what runs computed before them), so adding a knob never re-keys finished runs.
"""

from __future__ import annotations

import hashlib
import json
import re
from enum import Enum
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from cmift.config.spec import METHOD_GROUPS, METHODS, UNSET, discover, find
from cmift.config.validate import leaves

_PATH_OVERRIDES = ("task", "objective", "model", "seed", "mixture.tasks")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+\-]")


def _plain(value: Any) -> Any:
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True, enum_to_str=True)
    return value


def _reader(cfg: DictConfig):
    """key -> whether the run reads it, from the specs of its objective and distillation."""
    objective = find("objective", cfg.objective.name)
    distils = bool(objective and objective.distils)
    namespaces = set()
    for group in METHOD_GROUPS:
        spec = find(group, cfg[group].name) if group in cfg else None
        if spec is not None and (group != "distillation" or distils):
            namespaces |= set(spec.reads)
    tiny = cfg.model.name_or_path == "tiny"
    # keys outside the method groups that a method owns (task.verbalizers): read only when a
    # chosen method lists them
    discover()
    owned = {k for spec in METHODS.values() for k in spec.reads
             if k.partition(".")[0] not in METHOD_GROUPS}

    def reads(key: str) -> bool:
        if key in owned or any(key.startswith(f"{k}.") for k in owned):
            return key in namespaces or any(key.startswith(f"{k}.") for k in namespaces)
        group, _, rest = key.partition(".")
        if group == "distillation" and not distils:
            return False
        if group in METHOD_GROUPS and "." in rest:  # a namespace, or one knob
            return f"{group}.{rest.split('.', 1)[0]}" in namespaces or key in namespaces
        return tiny or not key.startswith("model.tiny.")

    return reads


def identity(cfg: DictConfig, purpose: str = "run") -> dict:
    """The settings that name a run (purpose 'run') or a teacher (purpose 'teacher': without
    the evaluation settings, which cannot change a teacher), as a nested dict."""
    from cmift.data.tasks import data_fingerprint

    reads = _reader(cfg)
    tasks = mixture_tasks(cfg)
    out: dict = {}
    for key, value, meta in leaves(cfg):
        legacy = meta.get("legacy", UNSET)
        if tasks and key.startswith("task."):  # a mixture's tasks are mixture.tasks
            continue
        if (not meta.get("identity", True) or not reads(key)
                or (purpose == "teacher" and not meta.get("teacher", True))
                or (legacy is not UNSET and _plain(value) == _plain(legacy))):
            continue
        *parents, leaf = key.split(".")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = _plain(value)
    out.setdefault("data", {})["fingerprint"] = (
        {t: data_fingerprint(t, cfg.data.glue_dir) for t in tasks} if tasks
        else data_fingerprint(cfg.task.name, cfg.data.glue_dir))
    for group in METHOD_GROUPS:
        spec = find(group, cfg[group].name) if group in cfg else None
        if spec is not None and spec.version != 1 and group in out:
            out[group]["version"] = spec.version
    return out


def mixture_tasks(cfg: DictConfig) -> list[str]:
    """The tasks of a multi-task run (mixture != none), else []."""
    mixture = cfg.get("mixture")
    return list(mixture.tasks) if mixture is not None and mixture.name != "none" else []


def task_label(cfg: DictConfig) -> str:
    """What a run trains on, as its directory and record name it: the task, or the mixture's
    tasks joined by '+' (cola+mrpc+rte)."""
    return "+".join(mixture_tasks(cfg)) or cfg.task.name


def config_hash(cfg: DictConfig, purpose: str = "run") -> str:
    blob = json.dumps(identity(cfg, purpose), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def flat_keys(tree: dict, prefix: str = "") -> set[str]:
    keys = set()
    for k, v in tree.items():
        keys |= flat_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return keys


def run_name(cfg: DictConfig, overrides: list[str]) -> str:
    """`<task>/<objective>/<model>/seed=<seed>[,<overrides that name the run>]-<hash>`."""
    named = flat_keys(identity(cfg))
    kept = []
    for o in overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        if key in _PATH_OVERRIDES or key.startswith("hydra"):
            continue
        if key in named or any(k.startswith(f"{key}.") for k in named):
            kept.append(o.lstrip("+~"))
    label = ",".join([f"seed={cfg.seed}", *sorted(kept)])
    label = _UNSAFE.sub("_", label)[:120]
    return f"{task_label(cfg)}/{cfg.objective.name}/{cfg.model.name}/{label}-{config_hash(cfg)}"


def existing_run_name(output_dir: str | Path, name: str) -> str:
    """`name`, or the directory already in `output_dir` with the same identity hash: the
    readable part of a name comes from how the overrides were typed (a preset's value repeated
    on the command line, 1e-4 for 0.0001), so the same settings could otherwise get a second
    directory and train again instead of resuming or skipping."""
    parent, leaf = name.rsplit("/", 1)
    folder = Path(output_dir) / parent
    if (folder / leaf).exists() or not folder.is_dir():
        return name
    twins = sorted(d.name for d in folder.glob(f"*-{leaf.rsplit('-', 1)[-1]}") if d.is_dir())
    return f"{parent}/{twins[0]}" if twins else name


def _run_name_resolver(*, _root_: DictConfig) -> str:
    name = run_name(_root_, list(_root_.hydra.overrides.task))
    return existing_run_name(_root_.output_dir, name)


def register_resolvers() -> None:
    from cmift.config import model_source

    model_source.register_resolvers()
    if not OmegaConf.has_resolver("cmift_run_name"):
        OmegaConf.register_new_resolver("cmift_run_name", _run_name_resolver)
