"""One run, start to finish: data, model, objective, loop, and the run directory's records."""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from cmift.checkpoint import clear as clear_checkpoints
from cmift.config import (
    ConfigError,
    choice,
    config_hash,
    identity,
    load_model_config,
    validate,
)
from cmift.data import Split, load_tokenized
from cmift.loop import fit, pick_device
from cmift.models import (
    build_tiny_tokenizer,
    is_tiny,
    keep_layers,
    load_model,
    load_tokenizer,
    max_positions,
)
from cmift.objectives import build as build_objective
from cmift.runs import (
    MANIFEST_FILE,
    METRICS_FILE,
    SCHEMA_VERSION,
    atomic_write,
    manifest,
    setup_logging,
    write_json,
)
from cmift.tasks import TASKS, load_raw, source_fingerprint
from cmift.teacher import ensure_teacher, save_logits

log = logging.getLogger("cmift")


def write_predictions(run_dir: Path, task, predictions: dict) -> None:
    """Dev predictions, one TSV per dev split: index, label, prediction (label names)."""
    import pandas as pd

    for split, (idx, labels, preds, probs) in predictions.items():
        frame = pd.DataFrame({"index": idx, "label": labels, "prediction": preds})
        if not task.is_regression:
            names = list(task.labels)
            frame["label"] = [names[i] for i in labels]
            frame["prediction"] = [names[i] for i in preds]
            for k, name in enumerate(names):
                frame[f"p_{name}"] = probs[:, k].round(6)
        atomic_write(run_dir / f"predictions_{split}.tsv",
                     lambda f, frame=frame: frame.to_csv(f, sep="\t", index=False))


def peak_memory_mb(device) -> dict:
    """Peak memory of this process so far: host RSS, and CUDA memory allocated by torch."""
    import resource

    peak = {"host_rss": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    if device.device.type == "cuda":
        peak["cuda_allocated"] = round(torch.cuda.max_memory_allocated(device.device) / 2**20, 1)
    return peak


def save_weights(model, tokenizer, folder: Path) -> None:
    """Final weights (safetensors), config and tokenizer, loadable with from_pretrained."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)


def prepare_data(cfg: DictConfig, model_cfg, task):
    """(tokenizer, train Split, {dev split name: Split}) for `model_cfg`'s tokenizer; the
    tokenization comes from the on-disk cache after the first run."""
    cache_dir = Path(cfg.data.cache_dir).expanduser()
    if is_tiny(model_cfg):
        def train_texts() -> list[str]:
            train = load_raw(task, cfg.data.glue_dir, cfg.data.skip_bad_rows)["train"]
            columns = [c for c in ("text_a", "text_b") if c in train.column_names]
            return [text for c in columns for text in train[c]]

        key = hashlib.sha256(json.dumps(source_fingerprint(task, cfg.data.glue_dir)).encode())
        key = f"{task.name}-{key.hexdigest()[:12]}"
        tokenizer = build_tiny_tokenizer(model_cfg, train_texts, cache_dir, key)
    else:
        tokenizer = load_tokenizer(model_cfg)
    tokenized, skipped = load_tokenized(task, cfg.data, tokenizer)
    train = Split.from_dataset(tokenized["train"])
    dev = {name: Split.from_dataset(tokenized[name]) for name in task.dev_splits}
    return tokenizer, train, dev, skipped


def run(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None,
        after_fit=None) -> dict:
    """Train and evaluate one configuration in `run_dir`; returns the metrics record.
    `after_fit(fit_result, train_split)` runs before the run is marked ok (the teacher stage
    uses it to store training-set logits)."""
    validate(cfg)
    task = TASKS[cfg.task.name]
    setup_logging(run_dir)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.train.precision)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    write_json(run_dir / MANIFEST_FILE, manifest(device.describe(), torch.get_num_threads()))
    record = {
        "schema_version": SCHEMA_VERSION, "status": "running", "task": task.name,
        "model": cfg.model.name, "objective": cfg.objective.name,
        "distillation": cfg.distillation.name, "seed": cfg.seed,
        "overrides": _overrides() if overrides is None else overrides,
        "config_hash": config_hash(cfg), "run_dir": str(run_dir),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "config": identity(cfg),  # every setting that can change the result, for tables
        "evals": [],
    }
    write_json(run_dir / METRICS_FILE, record)
    log.info("run %s on %s", run_dir, device.describe())
    try:
        _train(cfg, task, device, run_dir, record, after_fit)
    except BaseException as e:  # recorded for every failure, Ctrl-C included, then re-raised
        status = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
        record.update(status=status, error=f"{type(e).__name__}: {e}")
        write_json(run_dir / METRICS_FILE, record)
        if not isinstance(e, (ConfigError, KeyboardInterrupt)):
            log.error("run failed:\n%s", traceback.format_exc(), extra={"file_only": True})
        raise
    return record


def _train_teacher(tcfg: DictConfig, folder: Path) -> None:
    """Teacher stage: an ordinary run of the teacher config, plus its training-set logits."""
    from cmift.data import PadCollator
    from cmift.loop import predict

    def store_logits(result, train: Split) -> None:
        collate = PadCollator(train, result.pad_id, regression=False)
        logits = predict(result.forward, train, collate, tcfg.train.eval_batch_size)
        save_logits(folder, logits)

    run(tcfg, folder, overrides=[], after_fit=store_logits)


def _student(cfg, model_cfg, task, vocab_size: int):
    """(student model, its name): the named student model (`model_cfg`), or layers of the
    teacher backbone's pretrained weights (DistilBERT's recipe)."""
    if cfg.distillation.student:
        return load_model(model_cfg, task.num_labels, False, vocab_size), model_cfg.name
    backbone = load_model(cfg.model, task.num_labels, False, vocab_size)
    student, layers = keep_layers(backbone, cfg.distillation.student_layers)
    return student, f"{cfg.model.name}-L{'-'.join(map(str, layers))}"


def _teacher_source(cfg, teacher, tokenizer, device):
    """What the student objective asks for each batch's teacher logits: the cached logits, or
    (distillation.teacher_logits=live) the teacher model run on the batch."""
    from cmift.data import tokenizer_fingerprint
    from cmift.objectives.distill import CachedTeacher, LiveTeacher

    if choice(cfg.distillation.teacher_logits) == "cached":
        return CachedTeacher(torch.from_numpy(teacher.train_logits))
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cmift.loop import Forward
    from cmift.teacher import MODEL_DIR

    folder = teacher.run_dir / MODEL_DIR
    if tokenizer_fingerprint(AutoTokenizer.from_pretrained(str(folder))) != \
            tokenizer_fingerprint(tokenizer):
        raise ConfigError("distillation.teacher_logits=live is not allowed: the student's "
                          "tokenizer differs from the teacher's; use cached")
    model = AutoModelForSequenceClassification.from_pretrained(str(folder))
    model.to(device.device).eval()
    return LiveTeacher(Forward(model, device, features=False))


def _train(cfg, task, device, run_dir: Path, record: dict, after_fit=None) -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    context, teacher = {}, None
    if cfg.objective.teacher:
        teacher = ensure_teacher(cfg, _train_teacher)
        setup_logging(run_dir)  # the teacher stage logged into its own run directory
        log.info("teacher %s %s: %s", teacher.key, "reused" if teacher.reused else "trained",
                 teacher.run_dir)
        record["teacher"] = teacher.summary()
        write_json(run_dir / METRICS_FILE, record)
    model_cfg = (load_model_config(cfg.distillation.student)
                 if teacher and cfg.distillation.student else cfg.model)
    limit = max_positions(model_cfg)
    if cfg.data.max_seq_length > limit:
        raise ConfigError(f"data.max_seq_length={cfg.data.max_seq_length} is not allowed: "
                          f"model {model_cfg.name} takes at most {limit} positions")
    tokenizer, train, dev, skipped = prepare_data(cfg, model_cfg, task)
    record["skipped_rows"] = {split: len(lines) for split, lines in skipped.items()}
    transformers.set_seed(cfg.seed)  # before the model: the classifier head's init is seeded
    if teacher:
        model, record["student"] = _student(cfg, model_cfg, task, len(tokenizer))
        if len(teacher.train_logits) != len(train):
            raise ConfigError(f"teacher {teacher.key} has logits for {len(teacher.train_logits)} "
                              f"training examples, the student sees {len(train)}")
        context["teacher"] = _teacher_source(cfg, teacher, tokenizer, device)
    else:
        model = load_model(cfg.model, task.num_labels, task.is_regression, len(tokenizer))
    objective = build_objective(cfg, task, **context)
    n_params = sum(p.numel() for p in model.parameters())
    log.info("model %s (%.1fM parameters), task %s: %d train, %s dev",
             record.get("student", cfg.model.name), n_params / 1e6, task.name, len(train),
             {k: len(v) for k, v in dev.items()})

    def on_eval(evals: list) -> None:
        record["evals"] = evals
        write_json(run_dir / METRICS_FILE, record)

    result = fit(model, objective, task, train, dev, tokenizer.pad_token_id, cfg, device, run_dir,
                 on_eval)
    if after_fit is not None:
        after_fit(result, train)
    if cfg.train.save_model:
        save_weights(model, tokenizer, run_dir / "model")
    clear_checkpoints(run_dir)  # finished: the final weights (if kept) are what is left
    best = max(result.evals, key=lambda e: e["dev"]["score"])
    record.update(
        status="ok",
        final={"step": result.evals[-1]["step"], "epoch": result.evals[-1]["epoch"],
               **result.evals[-1]["dev"]},
        best={"step": best["step"], "epoch": best["epoch"], **best["dev"]},
        steps=result.steps,
        skipped_steps=result.skipped_steps,
        epochs=result.epochs_done,
        train_examples=result.train_examples,
        train_seconds=round(result.train_seconds, 3),
        train_examples_per_second=round(result.train_examples / max(result.train_seconds, 1e-9), 2),
        # the objective's no-grad passes (CMI centroids), included in train_seconds
        pass_seconds=round(result.pass_seconds, 3),
        train_tokens=result.train_tokens,  # padded tokens the steps processed
        eval_seconds=round(result.eval_seconds, 3),
        eval_examples_per_second=round(result.eval_examples / max(result.eval_seconds, 1e-9), 2),
        peak_memory_mb=peak_memory_mb(device),
        finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    )
    write_predictions(run_dir, task, result.last.predictions)
    write_json(run_dir / METRICS_FILE, record)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result.last.metrics.items())
    log.info("done in %.0fs (%.1f train ex/s): %s", result.train_seconds,
             record["train_examples_per_second"], shown)


def _overrides() -> list[str]:
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
