"""Distillation set-up: the teacher stage and the student.

A teacher is trained once per teacher identity (the run's backbone, task, seed, data
fingerprint, recipe and its own objective's knobs; not the evaluation settings, which cannot
change it) under <output_dir>/teachers/, with its training-set logits cached. A finished
standalone run of exactly those settings in the same output tree (a `ce` run for `kd`, a
`max_cmi` run for `max_cmi_kd`) is the teacher instead: only its logits are computed, once.
Parallel students that need the same teacher serialise on a file lock: the first trains (or
finds) it, the others wait and reuse it. The student is a named model, or layers of the
teacher backbone.
"""

from __future__ import annotations

import logging
import os
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from cmift.config.identity import config_hash
from cmift.config.schema import load_model_config, schema
from cmift.config.spec import ConfigError, choice, method
from cmift.data.tokenized import PadCollator, Split, tokenizer_fingerprint
from cmift.models.backbones import load_model
from cmift.models.students import keep_layers
from cmift.objectives.distill import CachedTeacher, LiveTeacher
from cmift.ranks import RANKS
from cmift.runs.files import (
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_DIR,
    TEACHERS_DIR,
    atomic_write,
    read_json,
    write_json,
)
from cmift.runs.rundir import drop_temp_files, finished_ok
from cmift.training.device import Forward
from cmift.training.evaluate import predict

log = logging.getLogger("cmift")
LOGITS_FILE = "train_logits.npy"
SOURCE_FILE = "source.json"  # a teacher that is a finished standalone run: where it lives


@dataclass
class Teacher:
    key: str
    run_dir: Path
    train_logits: np.ndarray  # (n_train, C), one row per training example in order
    record: dict  # the teacher run's metrics.json
    reused: bool

    def summary(self) -> dict:
        final = self.record.get("final", {})
        return {"key": self.key, "run_dir": str(self.run_dir), "objective":
                self.record.get("objective"), "reused": self.reused, "dev": final,
                "dev_cmi": final.get("cmi"), "dev_ncmi": final.get("ncmi")}


def teacher_config(cfg: DictConfig) -> DictConfig:
    """The config the teacher trains with: the run's backbone, task, seed, data and recipe (or
    distillation.teacher_lr / teacher_epochs where set), and the objective its spec names as
    teacher; no distillation, standard dropout, full tuning."""
    values = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    values.pop("hydra", None)
    values["objective"]["name"] = method("objective", cfg.objective.name).teacher
    values["distillation"] = {"name": "none"}
    # The dropout method is the student's: every student of a sweep shares one teacher.
    values["dropout"] = {"name": "standard"}
    values["tuning"] = {"name": "full"}  # likewise the tuning method
    values["train"]["save_model"] = True  # a live-logits student loads the teacher's weights
    for knob_name, key in (("teacher_lr", "lr"), ("teacher_epochs", "epochs")):
        if cfg.distillation.get(knob_name) is not None:  # the teacher's recipe of its own
            values["train"][key] = cfg.distillation[knob_name]
    return OmegaConf.merge(OmegaConf.structured(schema()), values)


def finished_with_weights(run_dir: Path) -> bool:
    """A finished (status ok) run whose weights were kept."""
    return finished_ok(run_dir) and (run_dir / MODEL_DIR).is_dir()


def _trained_in(folder: Path, weights: bool) -> Path | None:
    """Where the teacher stored in `folder` was trained: the folder itself, or the finished
    standalone run it reuses (source.json); None when there is no finished teacher yet, or
    when `weights` are asked for and were not kept. Cached students need only the logits: a
    clone of the committed records (logits, no weights) resumes a study without retraining
    its teachers."""
    if not (folder / LOGITS_FILE).is_file():
        return None
    try:
        source = Path(read_json(folder / SOURCE_FILE)["run_dir"])
    except (OSError, ValueError, KeyError):
        source = folder
    return source if (finished_with_weights if weights else finished_ok)(source) else None


def finished_standalone_run(tcfg: DictConfig, key: str) -> Path | None:
    """A finished run of the teacher's exact settings trained on its own (a `ce` run for `kd`,
    a `max_cmi` run for `max_cmi_kd`) in the same output tree, with its weights kept: it is
    the teacher, so no configuration is trained twice in one tree."""
    from cmift.config.schema import schema as root

    runs = Path(tcfg.output_dir) / tcfg.task.name / tcfg.objective.name / tcfg.model.name
    for metrics in sorted(runs.glob(f"*/{METRICS_FILE}")):
        run_dir = metrics.parent
        if not finished_with_weights(run_dir) or not (run_dir / CONFIG_FILE).is_file():
            continue
        try:
            settings = OmegaConf.merge(OmegaConf.structured(root()),
                                       OmegaConf.load(run_dir / CONFIG_FILE))
        except Exception:  # noqa: BLE001 (a record from an incompatible version: not a match)
            continue
        if config_hash(settings, purpose="teacher") == key:
            return run_dir
    return None


def _reuse(tcfg: DictConfig, source: Path, folder: Path) -> None:
    """The logit cache of a reused standalone run: one pass of its final weights over the
    training set, tokenised as its own run did."""
    from transformers import AutoModelForSequenceClassification

    from cmift.data.tasks import TASKS
    from cmift.training.device import pick_device
    from cmift.training.run import prepare_data

    tokenizer, train, *_ = prepare_data(tcfg, tcfg.model, TASKS[tcfg.task.name])
    device = pick_device(tcfg.train.precision)
    model = AutoModelForSequenceClassification.from_pretrained(str(source / MODEL_DIR))
    model.to(device.device).eval()
    logits = predict(Forward(model, device, features=False), train,
                     PadCollator(train, tokenizer.pad_token_id, regression=False),
                     tcfg.train.eval_batch_size)
    atomic_write(folder / LOGITS_FILE, lambda f: np.save(f, logits), binary=True)
    write_json(folder / SOURCE_FILE, {"run_dir": str(source)})  # after the logits: complete


def ensure_teacher(cfg: DictConfig, run: Callable) -> Teacher:
    """The teacher for `cfg`, trained now with `run(teacher_cfg, folder, overrides, after_fit)`
    unless a finished one is stored under its key."""
    tcfg = teacher_config(cfg)
    key = config_hash(tcfg, purpose="teacher")
    folder = (Path(cfg.output_dir) / TEACHERS_DIR / cfg.task.name / tcfg.objective.name /
              cfg.model.name / f"seed={cfg.seed}-{key}")
    folder.mkdir(parents=True, exist_ok=True)
    weights = choice(cfg.distillation.teacher_logits) == "live"  # a live teacher runs its model
    reused = True
    # a parallel student waits here for the teacher; on a data-parallel run rank 0 holds the
    # lock and decides, and every rank trains the teacher with it (rank 0 writes)
    with FileLock(folder / "teacher.lock") if RANKS.main else nullcontext():
        if RANKS.main and _trained_in(folder, weights) is None and (
                source := finished_standalone_run(tcfg, key)):
            drop_temp_files(folder)
            log.info("teacher %s: the finished %s run %s (its logits computed once)", key,
                     tcfg.objective.name, source)
            _reuse(tcfg, source, folder)
        if RANKS.broadcast(_trained_in(folder, weights) is None):
            reused = False
            if RANKS.main:
                drop_temp_files(folder)  # a killed earlier attempt's; the lock makes us the writer
            log.info("teacher %s: training (%s on %s) in %s", key, tcfg.objective.name,
                     cfg.model.name, folder)

            def store_logits(result, train: Split) -> None:
                collate = PadCollator(train, result.pad_id, regression=False)
                logits = predict(result.forward, train, collate, tcfg.train.eval_batch_size)
                atomic_write(folder / LOGITS_FILE, lambda f: np.save(f, logits), binary=True)

            run(tcfg, folder, overrides=[], after_fit=store_logits)
        RANKS.barrier()  # rank 0 has written the logits
        trained_in = _trained_in(folder, weights)
    return Teacher(key, trained_in, read_logits(folder / LOGITS_FILE),
                   read_json(trained_in / METRICS_FILE), reused)


def read_logits(path: Path) -> np.ndarray:
    """The cached teacher logits: a plain float array, never unpickled."""
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"teacher logit cache {path} is not a plain array ({e}); delete it to "
                         "train the teacher again") from None


def student_model_config(cfg: DictConfig):
    """The model config whose tokenizer the student reads: the named student, or the backbone."""
    return load_model_config(cfg.distillation.student) if cfg.distillation.student else cfg.model


def build_student(cfg, model_cfg, task, vocab_size: int):
    """(student model, its name): the named student model (`model_cfg`), or layers of the
    teacher backbone's pretrained weights (DistilBERT's recipe)."""
    if cfg.distillation.student:
        return load_model(model_cfg, task.num_labels, False, vocab_size), model_cfg.name
    backbone = load_model(cfg.model, task.num_labels, False, vocab_size)
    student, layers = keep_layers(backbone, cfg.distillation.student_layers)
    return student, f"{cfg.model.name}-L{'-'.join(map(str, layers))}"


def teacher_source(cfg, teacher: Teacher, tokenizer, train: Split, device):
    """What the student objective asks for each batch's teacher logits: the cached logits, or
    (distillation.teacher_logits=live) the teacher model run on the batch."""
    if len(teacher.train_logits) != len(train):
        raise ConfigError(f"teacher {teacher.key} has logits for {len(teacher.train_logits)} "
                          f"training examples, the student sees {len(train)}")
    if choice(cfg.distillation.teacher_logits) == "cached":
        return CachedTeacher(torch.from_numpy(teacher.train_logits))
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    folder = teacher.run_dir / MODEL_DIR
    if tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(folder))) != \
            tokenizer_fingerprint(tokenizer):
        raise ConfigError("distillation.teacher_logits=live is not allowed: the student's "
                          "tokenizer differs from the teacher's; use cached")
    model = AutoModelForSequenceClassification.from_pretrained(str(folder))
    model.to(device.device).eval()
    return LiveTeacher(Forward(model, device, features=False))


def finished_teacher_run(cfg: DictConfig) -> Path | None:
    """A teacher trained under <output_dir>/teachers/ with exactly this run's settings (the
    run identity, evaluation settings included): a `ce` run after its `kd` students needs no
    training of its own."""
    method_spec = method("objective", cfg.objective.name)
    if not method_spec.can_teach or cfg.dropout.name != "standard" or cfg.tuning.name != "full":
        return None
    key = config_hash(cfg)
    teachers = (Path(cfg.output_dir) / TEACHERS_DIR / cfg.task.name / cfg.objective.name /
                cfg.model.name)
    for metrics in sorted(teachers.glob(f"*/{METRICS_FILE}")):
        try:
            record = read_json(metrics)
        except (OSError, ValueError):
            continue
        if record.get("status") == "ok" and record.get("config_hash") == key:
            return metrics.parent
    return None


def adopt_teacher_run(source: Path, run_dir: Path, overrides: list[str]) -> dict:
    """This run's records from the teacher run that computed exactly this configuration: its
    config, steps, log, predictions and weights (hard links where the file system allows),
    and its metrics.json with this run's directory and overrides, and where it came from."""
    import shutil

    def link(src: str, dst: str) -> None:
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    for path in source.iterdir():
        if path.name in (METRICS_FILE, "teacher.lock", LOGITS_FILE, SOURCE_FILE) or \
                path.name.startswith("."):
            continue
        target = run_dir / path.name
        if path.is_dir():
            if path.name == MODEL_DIR:
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(path, target, copy_function=link)
        elif not target.exists():
            link(str(path), str(target))
    record = {**read_json(source / METRICS_FILE), "run_dir": str(run_dir),
              "overrides": overrides, "adopted_from": str(source)}
    write_json(run_dir / METRICS_FILE, record)  # last: the run counts as finished only now
    log.info("run %s: the teacher run %s computed exactly this configuration; its records "
             "are adopted, nothing trained", run_dir, source)
    return record
