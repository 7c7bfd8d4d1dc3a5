"""One run, start to finish: teacher (when distilling), data, model, objective, fit, save.

`run` owns the run directory's records; `_train` reads as the stages it logs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from cmift import faults
from cmift.config.spec import ConfigError, method
from cmift.config.validate import validate
from cmift.data.tasks import TASKS, data_fingerprint, load_raw, load_test
from cmift.data.tokenized import SELECTION, PadCollator, Split, load_tokenized, tokenize_splits
from cmift.dropout import DropoutContext, apply_dropout
from cmift.loggers import build as build_logger
from cmift.models.backbones import (
    build_tiny_tokenizer,
    is_tiny,
    load_model,
    load_tokenizer,
    max_positions,
    verify_before_loading,
)
from cmift.objectives import build as build_objective
from cmift.ranks import RANKS
from cmift.runs.files import (
    CONFIG_FILE,
    MANIFEST_FILE,
    MODEL_DIR,
    DiskFull,
    atomic_write,
    write_json,
)
from cmift.runs.logs import setup_logging
from cmift.runs.manifest import manifest
from cmift.runs.predictions import write_predictions, write_test_predictions
from cmift.runs.record import RunRecord, command_overrides
from cmift.training import checkpoint as ckpt
from cmift.training.device import bf16_hint, peak_memory_mb, pick_device
from cmift.training.evaluate import predict
from cmift.training.loop import fit
from cmift.training.seed import seed_everything
from cmift.training.teacher import (
    adopt_teacher_run,
    build_student,
    ensure_teacher,
    finished_teacher_run,
    student_model_config,
    teacher_source,
)
from cmift.tuning import apply_tuning, trains_part

log = logging.getLogger("cmift")


def run(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None,
        after_fit=None) -> dict:
    """Train and evaluate one configuration in `run_dir`; returns the metrics record.
    `after_fit(fit_result, train_split)` runs before the run is marked ok (the teacher stage
    uses it to store training-set logits)."""
    validate(cfg)
    setup_logging(run_dir)
    overrides = command_overrides() if overrides is None else overrides
    # rerun=true trains for real, even where a teacher computed this configuration
    # (a data-parallel run trains: adopting is one process's file work)
    if (after_fit is None and not cfg.rerun and not RANKS.parallel
            and (teacher := finished_teacher_run(cfg))):
        return adopt_teacher_run(teacher, run_dir, overrides)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.train.precision)
    atomic_write(run_dir / CONFIG_FILE, lambda f: f.write(OmegaConf.to_yaml(cfg, resolve=True)))
    write_json(run_dir / MANIFEST_FILE, manifest(device.describe(), torch.get_num_threads()))
    record = RunRecord.start(cfg, run_dir, overrides)
    log.info("run %s on %s", run_dir, device.describe())
    if hint := bf16_hint(cfg.train.precision, device):
        log.info(hint)
    try:
        _train(cfg, device, run_dir, record, after_fit)
    except BaseException as e:  # recorded for every failure, Ctrl-C included, then re-raised
        record.fail(e)
        if not isinstance(e, (ConfigError, KeyboardInterrupt, DiskFull)):
            log.error("run failed:\n%s", traceback.format_exc(), extra={"file_only": True})
        raise
    return record.data


def _train(cfg, device, run_dir: Path, record: RunRecord, after_fit=None) -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    task, teacher = TASKS[cfg.task.name], None
    verify_before_loading(cfg.model)  # a wrong file fails now, not after minutes of data work
    if cfg.mixture.name != "none":  # several tasks, one shared encoder
        from cmift.training.multitask import train_mixture

        return train_mixture(cfg, device, run_dir, record, run, prepare_data)
    if method("objective", cfg.objective.name).distils:
        teacher = ensure_teacher(cfg, run)
        setup_logging(run_dir)  # the teacher stage logged into its own run directory
        log.info("teacher %s %s: %s", teacher.key, "reused" if teacher.reused else "trained",
                 teacher.run_dir)
        record.update(teacher=teacher.summary())
    model_cfg = student_model_config(cfg) if teacher else cfg.model
    verify_before_loading(model_cfg)
    if not RANKS.main:
        RANKS.barrier()  # data-parallel: rank 0 tokenises and fills the caches first
    tokenizer, train, dev, selection, skipped = prepare_data(cfg, model_cfg, task)
    if RANKS.main:
        RANKS.barrier()
    record.update(skipped_rows={split: len(lines) for split, lines in skipped.items()})
    seed_everything(cfg.seed)  # before the model: the classifier head's init is seeded
    context = {}
    if teacher:
        model, student = build_student(cfg, model_cfg, task, len(tokenizer))
        record.update(student=student)
        context["teacher"] = teacher_source(cfg, teacher, tokenizer, train, device)
    else:
        model = load_model(cfg.model, task.num_labels, task.is_regression, len(tokenizer))
    setup = apply_dropout(model, DropoutContext(cfg, model_cfg, task, train, tokenizer,
                                                device.device))
    # after dropout: it reads the backbone
    model, tuning = apply_tuning(model, cfg, model_cfg, tokenizer)
    record.update(dropout_setup=setup, tuning_setup=tuning,
                  trainable_parameters=tuning["trainable_parameters"])
    objective = build_objective(cfg, task, **context)
    log.info("model %s (%.1fM parameters), objective %s, task %s: %d train, %s dev",
             record.data.get("student", cfg.model.name),
             sum(p.numel() for p in model.parameters()) / 1e6, cfg.objective.name, task.name,
             len(train), {k: len(v) for k, v in dev.items()})
    logger = build_logger(cfg.logger, run_dir,
                          OmegaConf.to_container(cfg, resolve=True, enum_to_str=True))
    try:
        result = fit(model, objective, task, train, dev, tokenizer.pad_token_id, cfg, device,
                     run_dir, on_eval=lambda evals: record.update(evals=evals),
                     selection=selection, logger=logger)
        _finish(cfg, task, tokenizer, model, result, train, run_dir, record, device, after_fit)
        logger.finish(record.data)
    finally:
        logger.close()


def _finish(cfg, task, tokenizer, model, result, train, run_dir: Path, record: RunRecord,
            device, after_fit) -> None:
    """After training: the teacher's hook, weights, predictions, then the record says ok."""
    if after_fit is not None:
        after_fit(result, train)
    if cfg.train.save_model and RANKS.main:
        save_weights(model, tokenizer, run_dir / MODEL_DIR, task)
    write_predictions(run_dir, task, result.last.predictions)
    if cfg.data.predict_test:
        predict_test(cfg, task, tokenizer, result, run_dir)
    record.finish(result, peak_memory_mb(device))
    # only now: a run killed before `finish` resumes from its last checkpoint, not from scratch
    if RANKS.main:
        ckpt.clear(run_dir)
    shown = ", ".join(f"{k} {v:.4f}" for k, v in result.last.metrics.items())
    log.info("done in %.0fs (%.1f train ex/s): %s", result.train_seconds,
             record.data["train_examples_per_second"], shown)


def prepare_data(cfg: DictConfig, model_cfg, task):
    """(tokenizer, train Split, {dev split name: Split}, selection Split or None, skipped rows)
    for `model_cfg`'s tokenizer; the tokenization comes from the on-disk cache after the first
    run."""
    limit = max_positions(model_cfg)
    if cfg.data.max_seq_length > limit:
        raise ConfigError(f"data.max_seq_length={cfg.data.max_seq_length} is not allowed: "
                          f"model {model_cfg.name} takes at most {limit} positions")
    cache_dir = Path(cfg.data.cache_dir).expanduser()
    if is_tiny(model_cfg):
        def train_texts() -> list[str]:
            train = load_raw(task, cfg.data.glue_dir, cfg.data.skip_bad_rows)["train"]
            columns = [c for c in ("text_a", "text_b") if c in train.column_names]
            return [text for c in columns for text in train[c]]

        key = json.dumps(data_fingerprint(task.name, cfg.data.glue_dir), sort_keys=True)
        key = f"{task.name}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"
        tokenizer = build_tiny_tokenizer(model_cfg, train_texts, cache_dir, key)
    else:
        tokenizer = load_tokenizer(model_cfg)
    tokenized, skipped = load_tokenized(task, cfg.data, tokenizer)
    train = Split.from_dataset(tokenized["train"])
    dev = {name: Split.from_dataset(tokenized[name]) for name in task.dev_splits}
    selection = Split.from_dataset(tokenized[SELECTION]) if SELECTION in tokenized else None
    return tokenizer, train, dev, selection, skipped


def predict_test(cfg, task, tokenizer, result, run_dir: Path) -> None:
    """Predictions of the final model on the task's unlabelled test split(s), decoded as the
    dev evaluation decodes (ncmi: by its centroids)."""
    from datasets import DatasetDict

    test = load_test(task, cfg.data.glue_dir)
    if not test:
        log.info("no test split found for %s: no test predictions", task.name)
        return
    tokenized = tokenize_splits(DatasetDict(test), tokenizer, cfg.data.max_seq_length)
    for split in tokenized:
        data = Split.from_dataset(tokenized[split])
        logits = predict(result.forward, data, PadCollator(data, result.pad_id, False),
                         cfg.train.eval_batch_size, result.decode)
        path = write_test_predictions(run_dir, task, split, data.idx, logits)
        log.info("test predictions: %s (%d examples)", path.name, len(data))


def save_weights(model, tokenizer, folder: Path, task) -> None:
    """Final weights (safetensors), config and tokenizer, loadable with from_pretrained; the
    config names the task's classes, so a pipeline says `equivalent`, not `LABEL_1`."""
    if task.label_names and not trains_part(model):  # an adapter keeps its base's config
        model.config.id2label = dict(enumerate(task.label_names))
        model.config.label2id = {name: i for i, name in enumerate(task.label_names)}
    tmp = folder.with_name(f".{folder.name}.tmp")
    model.save_pretrained(str(tmp), safe_serialization=True)
    tokenizer.save_pretrained(str(tmp))
    faults.kill_point("model")
    if folder.exists():
        shutil.rmtree(folder)
    tmp.rename(folder)
