"""Validation: every knob's range (declared with the knob), and the rules between groups that
the method specs state (regression support, teacher and distillation loss)."""

from __future__ import annotations

from typing import Any, Iterator

from omegaconf import DictConfig, OmegaConf

from cmift.config.spec import METHOD_GROUPS, ConfigError, iter_fields, method, options


def leaves(node: DictConfig, prefix: str = "") -> Iterator[tuple[str, Any, dict]]:
    """(dotted key, value, knob metadata) for every leaf of a structured config node."""
    metadata = {f.name: f.metadata for f in iter_fields(OmegaConf.get_type(node))}
    for key in node.keys():
        if key == "hydra":
            continue
        path = f"{prefix}{key}"
        value = node._get_node(key)
        if isinstance(value, DictConfig):
            yield from leaves(value, f"{path}.")
        else:
            yield path, node[key], metadata.get(key, {})


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def undeclared(node: DictConfig, prefix: str = "") -> list[str]:
    """Keys the schema does not declare: what a `+key=value` override adds (nothing reads it)."""
    declared = {f.name for f in iter_fields(OmegaConf.get_type(node))}
    found = []
    for key in node.keys():
        if key == "hydra":
            continue
        if declared and key not in declared:
            found.append(f"{prefix}{key}")
        elif isinstance(child := node._get_node(key), DictConfig):
            found += undeclared(child, f"{prefix}{key}.")
    return found


def check_overrides(cfg: DictConfig, overrides: list[str]) -> None:
    """What composition cannot see: OmegaConf turns any integer into a bool (`=2` is true),
    while the run's name keeps the spelling, so one setting could run twice under two names."""
    from omegaconf.nodes import BooleanNode

    for item in overrides:
        key, sep, value = item.lstrip("+~").partition("=")
        if not sep or key.startswith("hydra"):
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if (isinstance(node, DictConfig) and leaf in node
                and isinstance(node._get_node(leaf), BooleanNode)
                and value.strip().lower() not in ("true", "false")):
            raise ConfigError(f"{key}={value!r} is not allowed: true or false")
        if key == "recipe" and value not in ("null", *recipe_options()):
            # the group is optional (a user's model may have no recipe), so Hydra skips a typo
            raise ConfigError(f"recipe={value!r} is not allowed: one of {recipe_options()}")


def recipe_options() -> list[str]:
    """The recipes Hydra can see (conf/recipe/ and any hydra.searchpath)."""
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        return sorted(GlobalHydra.instance().config_loader().get_group_options("recipe"))
    from cmift.config.schema import CONF_DIR

    return sorted(p.stem for p in (CONF_DIR / "recipe").glob("*.yaml"))


def validate(cfg: DictConfig, overrides: list[str] = ()) -> None:
    """Refuse a bad config with one line naming the key, the value and what is allowed."""
    from cmift.data.tasks import TASKS

    extra = undeclared(cfg)
    if extra:
        raise ConfigError(f"{extra[0]} is not a cmift key: a '+' override adds a key that "
                          "nothing reads (`cmift --help` lists every key)")
    check_overrides(cfg, list(overrides))
    _require(cfg.task.name in TASKS, "task.name", cfg.task.name, f"one of {sorted(TASKS)}")
    for key, value, meta in leaves(cfg):
        check = meta.get("check")
        if check is not None:
            _require(check.ok(value), key, value, check.allowed)
    for group in METHOD_GROUPS:
        spec = method(group, cfg[group].name)
        if spec.check is not None:
            spec.check(cfg)
    objective = method("objective", cfg.objective.name)
    distillation = method("distillation", cfg.distillation.name)
    if cfg.mixture.name != "none":
        _check_mixture(cfg, objective)
    task = TASKS[cfg.task.name]
    if task.is_regression and not objective.regression and cfg.mixture.name == "none":
        _require(False, "objective", objective.name,
                 f"a classification objective; task {task.name} is regression (use "
                 "objective=ce)")
    if cfg.distillation.get("teacher_epochs") is not None and cfg.train.max_steps is not None:
        # the teacher inherits the student's max_steps, which would cut its epochs short
        _require(False, "distillation.teacher_epochs", cfg.distillation.teacher_epochs,
                 f"null while train.max_steps={cfg.train.max_steps} is set (max_steps bounds "
                 "the teacher's run too; unset one of them)")
    losses = [n for n in options("distillation") if n != "none"]
    if objective.distils:
        _require(distillation.name != "none", "distillation", distillation.name,
                 f"one of {losses} with objective={objective.name}")
    else:
        _require(distillation.name == "none", "distillation", distillation.name,
                 f"none with objective={objective.name} (use objective=kd or max_cmi_kd to "
                 "distil)")


def _check_mixture(cfg: DictConfig, objective) -> None:
    """What composes with multi-task training: objectives that train each task on its own
    batches (per-task centroids), full tuning, dropout methods that need no per-task pass."""
    from cmift.data.tasks import TASKS

    rule = f"with mixture={cfg.mixture.name}"
    _require(not objective.distils, "objective", objective.name,
             f"an objective that does not distil {rule} (teachers are single-task)")
    _require(cfg.tuning.name == "full", "tuning", cfg.tuning.name, f"full {rule}")
    _require(cfg.dropout.name in ("standard", "none", "gaussian"), "dropout", cfg.dropout.name,
             f"standard, none or gaussian {rule} (guided rates come from one task's Fisher pass)")
    for name in cfg.mixture.tasks:
        if TASKS[name].is_regression and not objective.regression:
            _require(False, "objective", objective.name,
                     f"an objective for regression too: mixture.tasks has {name} (regression); "
                     "use objective=ce or leave it out")
