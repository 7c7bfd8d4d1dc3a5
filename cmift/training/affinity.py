"""TaskPGM's task affinities: single-task models' behaviour on a common probe set.

GLUE heads differ in label count, so their predictive distributions live in different spaces.
What every single-task model shares is its encoder's coordinates (all are fine-tuned from one
pretrained backbone): each model's feature-space distribution r(x) (METHOD.md's r, the map the
CMI objectives use: softmax of the standardised [CLS] feature the head reads, over the d
hidden dimensions) is comparable across tasks. The probe set is `probe_per_task` training
examples drawn (seeded) from every task; every model reads every probe.

The single-task models are ordinary finished `ce` runs of the mixture's settings (found in the
output tree by their run identity, or trained there first, under a file lock, as teachers are):
the same runs are the single-task rows of the tables.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from filelock import FileLock
from omegaconf import DictConfig, OmegaConf

from cmift.config.identity import config_hash, run_name
from cmift.config.schema import schema
from cmift.data.tokenized import PadCollator, Split
from cmift.mixtures import taskpgm
from cmift.objectives.cmi import CMIKnobs
from cmift.objectives.cmi_terms import FeatureMap
from cmift.runs.files import METRICS_FILE, MODEL_DIR
from cmift.runs.record import command_overrides
from cmift.training.device import Forward
from cmift.training.evaluate import eval_passes
from cmift.training.teacher import finished_with_weights

log = logging.getLogger("cmift")


def single_task_config(cfg: DictConfig, task: str) -> DictConfig:
    """The single-task `ce` run of `task` with the mixture run's model, seed, data and recipe."""
    values = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    values.pop("hydra", None)
    values["task"] = {"name": task, "verbalizers": None}
    values["mixture"] = {"name": "none", "tasks": [], "budget": None}
    values["objective"]["name"] = "ce"
    values["train"]["save_model"] = True  # the affinities read its weights
    return OmegaConf.merge(OmegaConf.structured(schema()), values)


def single_task_overrides(parent: list[str], task: str) -> list[str]:
    """The command-line overrides that reproduce the single-task run of `task` (what its record
    keeps, so that its command line and identity can be read back): the mixture run's own,
    with its task, objective and mixture settings replaced by the single-task run's."""
    own = ("task", "objective", "mixture")
    kept = [o for o in parent
            if o.lstrip("+~").split("=", 1)[0].split(".", 1)[0] not in own]
    return [*kept, f"task={task}", "objective=ce", "mixture=none", "mixture.tasks=[]"]


def single_task_run(cfg: DictConfig, task: str, run) -> Path:
    """The finished single-task run of `task` in the output tree, trained now if missing."""
    tcfg = single_task_config(cfg, task)
    key = config_hash(tcfg)
    folder = Path(tcfg.output_dir) / run_name(tcfg, [f"task={task}"])
    runs = folder.parent
    runs.mkdir(parents=True, exist_ok=True)
    with FileLock(runs / f".single-{key}.lock"):  # parallel mixture runs: one trains, others wait
        found = [m.parent for m in sorted(runs.glob(f"*-{key}/{METRICS_FILE}"))
                 if finished_with_weights(m.parent)]
        if found:
            log.info("taskpgm: single-task %s model reused: %s", task, found[0])
            return found[0]
        log.info("taskpgm: training the single-task %s model in %s", task, folder)
        folder.mkdir(parents=True, exist_ok=True)
        run(tcfg, folder, overrides=single_task_overrides(command_overrides(), task))
    return folder


def probe_texts(cfg: DictConfig, parts, per_task: int) -> list:
    """Up to `per_task` training examples of every task, drawn with the run's seed from the
    training split the run trains on (after data limits and the selection carve): raw text,
    so that each single-task model reads them through its own tokenizer."""
    from cmift.data.tasks import load_raw
    from cmift.data.tokenized import carve_selection, limit_samples

    rng = np.random.default_rng(cfg.seed)
    probes = []
    for d in parts:
        raw = load_raw(d.task, cfg.data.glue_dir, cfg.data.skip_bad_rows)
        raw = carve_selection(limit_samples(raw, cfg.data), cfg.data.selection_fraction,
                              cfg.data.selection_seed, d.task.is_regression)
        train = raw["train"]
        chosen = np.sort(rng.choice(len(train), size=min(per_task, len(train)), replace=False))
        probes.append(train.select(chosen.tolist()))
    return probes


def distributions(model_dir: Path, probes, cfg: DictConfig, device) -> np.ndarray:
    """r(x) of one single-task model for every probe example, in probe order: (n_probe, d)."""
    from datasets import DatasetDict
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from cmift.data.tokenized import tokenize_splits

    model = AutoModelForSequenceClassification.from_pretrained(str(model_dir))
    model.to(device.device).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    forward = Forward(model, device, features=True)
    features = FeatureMap(OmegaConf.structured(CMIKnobs))  # feature space, standardised softmax
    rows = []
    for probe in probes:
        tokenized = tokenize_splits(DatasetDict({"probe": probe}), tokenizer,
                                    cfg.data.max_seq_length)["probe"]
        split = Split.from_dataset(tokenized)
        r = None
        for outputs, _, indices in eval_passes(forward, split,
                                               PadCollator(split, tokenizer.pad_token_id, False),
                                               cfg.train.eval_batch_size, inference=True):
            probs = features.log_r(outputs).exp().double().cpu().numpy()
            if r is None:
                r = np.zeros((len(split), probs.shape[1]))
            r[indices] = probs
        rows.append(r)
    forward.tap.remove()
    return np.concatenate(rows)


def task_affinities(cfg: DictConfig, parts, device, run) -> dict:
    """S (and the divergences it came from) between the mixture's tasks, for the record."""
    knobs = cfg.mixture.taskpgm
    runs = [single_task_run(cfg, d.name, run) for d in parts]
    probes = probe_texts(cfg, parts, knobs.probe_per_task)
    R = np.stack([distributions(r / MODEL_DIR, probes, cfg, device) for r in runs])
    divergence = str(getattr(knobs.divergence, "value", knobs.divergence))
    info = {"divergence": divergence, "single_task_runs": [str(r) for r in runs],
            "probe_examples": [len(probe) for probe in probes]}
    if divergence == "jsd":
        S, D = taskpgm.jsd_similarity(R)
        info["jsd"] = D.round(6).tolist()
    else:
        S = taskpgm.pmi_similarity(R)
    solution = taskpgm.solve(S, float(knobs.beta), float(knobs.lam), float(knobs.ridge))
    info.update(similarity=S.round(6).tolist(), p=solution.p.tolist(), projected=solution.projected,
                unconstrained=solution.unconstrained.round(6).tolist(),
                energy=solution.energy)
    return info

