"""The teacher stage of distillation: train a teacher once per configuration, store it under a
key derived from that configuration, and hand its cached training-set logits to students.

A teacher is identified by the task, the backbone (`model`), the teacher objective with its
knobs, the seed, and the training and data settings. Parallel students that need the same
teacher serialise on a file lock: the first trains it, the others wait and reuse it.
"""

from __future__ import annotations

import fcntl
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf

from cmift.config import Config, config_hash
from cmift.runs import METRICS_FILE, atomic_write, read_json

log = logging.getLogger("cmift")
LOGITS_FILE = "train_logits.npy"
MODEL_DIR = "model"  # the teacher's weights, for distillation.teacher_logits=live
TEACHERS_DIR = "teachers"


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
    """The config the teacher trains with: the run's backbone, task, seed, data and recipe, its
    own objective; no distillation. Knobs a ce teacher does not use are zeroed so they do not
    split its key."""
    values = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    values.pop("hydra", None)
    objective = values["objective"]
    objective.update(name=cfg.objective.teacher, teacher=None)
    if objective["name"] == "ce":
        objective.update(lam=0.0, beta=0.0, cmi={})
    values["distillation"] = {"name": "none"}
    values["train"]["save_model"] = True  # a live-logits student loads the teacher's weights
    return OmegaConf.merge(OmegaConf.structured(Config), values)


def teacher_dir(cfg: DictConfig, key: str) -> Path:
    return (Path(cfg.output_dir) / TEACHERS_DIR / cfg.task.name / cfg.objective.teacher /
            cfg.model.name / f"seed={cfg.seed}-{key}")


def _ready(folder: Path) -> bool:
    try:
        ok = read_json(folder / METRICS_FILE).get("status") == "ok"
    except (OSError, ValueError):
        return False
    return ok and (folder / LOGITS_FILE).is_file() and (folder / MODEL_DIR).is_dir()


def save_logits(folder: Path, logits: np.ndarray) -> None:
    atomic_write(folder / LOGITS_FILE, lambda f: np.save(f, logits), binary=True)


def ensure_teacher(cfg: DictConfig, train_fn) -> Teacher:
    """The teacher for `cfg`, trained now with `train_fn(teacher_cfg, folder)` unless a finished
    one is stored under its key. `train_fn` must leave LOGITS_FILE in the folder."""
    tcfg = teacher_config(cfg)
    key = config_hash(tcfg)
    folder = teacher_dir(cfg, key)
    folder.mkdir(parents=True, exist_ok=True)
    reused = True
    with open(folder / "teacher.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a parallel student waits here for the teacher
        if not _ready(folder):
            reused = False
            log.info("teacher %s: training (%s on %s) in %s", key, tcfg.objective.name,
                     cfg.model.name, folder)
            train_fn(tcfg, folder)
    record = read_json(folder / METRICS_FILE)
    logits = np.load(folder / LOGITS_FILE)
    return Teacher(key, folder, logits, record, reused)
