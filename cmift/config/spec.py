"""Method specs: what a method is, declared once and torch-free.

A method is an option of a config group: an objective (`objective=min_cmi`), a distillation
loss (`distillation=ttm`), a dropout method (`dropout=guided`), and every method group added
later. Its module declares
- its knobs: a dataclass whose fields are made with `knob()` (default, allowed range, and the
  value that reproduces the behaviour from before the knob existed), registered under its own
  namespace with `@register_knobs("objective.cmi")`;
- a `MethodSpec`: which knob namespaces it reads, whether it supports regression, which
  objective's run is its teacher, which knobs the tables tune.

Everything else reads the specs: the Hydra schema (cmift/config/schema.py), `validate`, the run
identity, the teacher config and the tables. None of them names a method, so a new objective
is one Python file in cmift/objectives/ and one YAML in conf/objective/.

Method modules are found by `discover()`, which imports every module of METHOD_PACKAGES (a
plugin lookup by package name, so this module imports nothing above it). They must import
torch lazily (cmift/lazy.py): the config path stays fast.
"""

from __future__ import annotations

import copy
import importlib
import pkgutil
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from typing import Any, Callable, Iterator, Optional

METHOD_PACKAGES = ("cmift.objectives", "cmift.dropout", "cmift.tuning", "cmift.mixtures")
# The config groups whose options are methods with specs; their knobs live in namespaces
# under the group (objective.cmi.lam, distillation.kd.temperature, dropout.guided.p_max).
METHOD_GROUPS = ("objective", "distillation", "dropout", "tuning", "mixture")
UNSET = object()  # "no legacy value": the knob existed when run identities were first keyed


class ConfigError(ValueError):
    """A bad config value: reported as one line, exit code 2."""


# ----- ranges -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Check:
    ok: Callable[[Any], bool]
    allowed: str  # what is allowed, in words, for the one-line error


def greater(lo, kind: str = "a float") -> Check:
    return Check(lambda v: v > lo, f"{kind} > {lo}")


def at_least(lo, kind: str = "a float") -> Check:
    return Check(lambda v: v >= lo, f"{kind} >= {lo}")


def between(lo, hi, hi_open: bool = False) -> Check:
    if hi_open:
        return Check(lambda v: lo <= v < hi, f"{lo} <= value < {hi}")
    return Check(lambda v: lo <= v <= hi, f"{lo} <= value <= {hi}")


POSITIVE_INT = greater(0, "an integer")


def optional(check: Check, null_means: str = "") -> Check:
    meaning = f" ({null_means})" if null_means else ""
    return Check(lambda v: v is None or check.ok(v), f"null{meaning} or {check.allowed}")


# ----- knobs ------------------------------------------------------------------------------
def knob(default: Any = MISSING, check: Optional[Check] = None, *, legacy: Any = UNSET,
         identity: bool = True, teacher: bool = True):
    """A config field with its rules.

    check:    the allowed range (validate refuses anything else, naming the key).
    legacy:   for a knob added after run identities were first keyed: the value at which a run
              computes what it computed before the knob existed. At that value the knob stays
              out of the run identity, so finished runs keep their directories and sweeps skip
              them.
    identity: False for settings that cannot change a result (logging, where files live).
    teacher:  False for settings that cannot change a teacher (evaluation schedule and size).
    """
    meta = {"check": check, "legacy": legacy, "identity": identity, "teacher": teacher}
    if isinstance(default, (list, dict)) or is_dataclass(default):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=meta)
    return field(default=default, metadata=meta)


def choice(option) -> str:
    """An enum knob from the structured config (or a plain string) as its string value."""
    return str(getattr(option, "value", option))


def iter_fields(node_type: type) -> Iterator:
    return iter(fields(node_type)) if is_dataclass(node_type) else iter(())


# ----- methods ----------------------------------------------------------------------------
@dataclass(frozen=True)
class MethodSpec:
    group: str  # the config group: objective | distillation | dropout
    name: str  # the option, conf/<group>/<name>.yaml
    summary: str  # one line, for docs and errors
    # knob namespaces it reads, e.g. ("objective.cmi",), or single knobs ("objective.cmi.space")
    reads: tuple[str, ...] = ()
    tuned: tuple[str, ...] = ()  # knobs the tables choose per task, e.g. ("objective.cmi.lam",)
    regression: bool = True  # works on regression tasks (STS-B)
    teacher: Optional[str] = None  # a distillation objective: the objective of its teacher
    can_teach: bool = False  # may be the teacher of a distillation objective
    # Bump when a fix changes what the method computes: runs of an older version are then
    # never taken for finished runs of this one (a version above 1 enters the run identity).
    version: int = 1
    # rules between its knobs, checked by `validate`: raise ConfigError naming the key
    check: Optional[Callable[[Any], None]] = None

    @property
    def distils(self) -> bool:
        return self.teacher is not None


KNOBS: dict[str, type] = {}  # "objective.cmi" -> the dataclass of that namespace
METHODS: dict[tuple[str, str], MethodSpec] = {}


def register_knobs(namespace: str):
    """Class decorator: the knob dataclass of `namespace` (e.g. "objective.cmi")."""
    def add(knobs: type) -> type:
        KNOBS[namespace] = knobs
        return knobs

    return add


def register(*specs: MethodSpec) -> None:
    for spec in specs:
        METHODS[(spec.group, spec.name)] = spec


def implementations(table: dict) -> Callable:
    """`implements(*names)` for a method package: a decorator that files the decorated class or
    function in `table` under each of the (registered) method names."""
    def implements(*names: str):
        def add(obj):
            for name in names:
                table[name] = obj
            return obj

        return add

    return implements


def discover() -> None:
    """Import every method module once, so that their specs are registered."""
    for package_name in METHOD_PACKAGES:
        package = importlib.import_module(package_name)
        for module in pkgutil.iter_modules(package.__path__):
            importlib.import_module(f"{package_name}.{module.name}")


def options(group: str) -> list[str]:
    discover()
    return sorted(name for g, name in METHODS if g == group)


def method(group: str, name: str) -> MethodSpec:
    """The spec of `group=name`; ConfigError naming the options when there is none."""
    discover()
    spec = METHODS.get((group, name))
    if spec is None:
        raise ConfigError(f"{group}.name={name!r} is not allowed: one of {options(group)}")
    return spec


def find(group: str, name: str) -> Optional[MethodSpec]:
    discover()
    return METHODS.get((group, name))


def namespaces(group: str) -> dict[str, type]:
    """The knob namespaces of a group, e.g. {"cmi": CMIKnobs} for `objective`."""
    discover()
    return {path.split(".", 1)[1]: cls for path, cls in sorted(KNOBS.items())
            if path.split(".", 1)[0] == group}
