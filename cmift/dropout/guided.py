"""`dropout=guided`: Fisher-guided dropout rates (arXiv 2406.14005, the authors' code
iamcmj/Guided-Dropout).

Each dropout site (cmift/dropout/sites.py) is scored by the Fisher information of the sub-layer
it follows: the unweighted mean over the sub-layer's tensors of each tensor's mean diagonal
empirical Fisher (cmift/dropout/fisher.py), measured once on the pretrained backbone before
fine-tuning. The least informative sub-layers get the most dropout:
- `schedule=rank` (the paper's): sort the n scores ascending and give them
  p = linspace(p_max, p_min, n): the lowest score p_max, the highest p_min;
- `schedule=log_score`: p linear in the log score, p_max at the lowest, p_min at the highest
  (the same end points, spaced by how far apart the scores are rather than by rank).
The classifier head's dropout is not a site and keeps its rate.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from cmift.config.spec import (
    POSITIVE_INT,
    ConfigError,
    MethodSpec,
    between,
    choice,
    knob,
    register,
    register_knobs,
)
from cmift.dropout import implements, rates


class Source(str, Enum):
    task = "task"  # the task loss with a fresh head: every backbone
    mlm = "mlm"  # the masked-LM loss of the checkpoint's MLM head (the paper's)


class PerExample(str, Enum):
    auto = "auto"  # vmap on CUDA, the loop on a CPU (measured faster there)
    vmap = "vmap"  # torch.func.vmap over one example's gradient, `chunk` examples at a time
    loop = "loop"  # one ordinary backward pass per example


class Schedule(str, Enum):
    rank = "rank"  # p = linspace(p_max, p_min, n) over the scores sorted ascending (the paper's)
    log_score = "log_score"  # p linear in log(score), p_max at the lowest, p_min at the highest


@register_knobs("dropout.guided")
@dataclass
class GuidedKnobs:
    p_max: float = knob(0.099, between(0, 1, hi_open=True))  # the least informative site's p
    p_min: float = knob(0.0, between(0, 1, hi_open=True))  # the most informative site's p
    source: Source = knob(Source.task)
    samples: int = knob(512, POSITIVE_INT)  # training examples the Fisher is averaged over
    schedule: Schedule = knob(Schedule.rank)
    # examples, MLM masks and the fresh head of the Fisher: one seed for every run of a sweep
    fisher_seed: int = knob(0)
    # how per-example gradients are taken: the same numbers, at different speeds
    per_example: PerExample = knob(PerExample.auto, identity=False)
    chunk: int = knob(8, POSITIVE_INT, identity=False)  # examples per vectorised gradient


def _ordered(cfg) -> None:
    knobs = cfg.dropout.guided
    if knobs.p_min > knobs.p_max:
        raise ConfigError(f"dropout.guided.p_min={knobs.p_min} is not allowed: at most "
                          f"dropout.guided.p_max={knobs.p_max}")


register(MethodSpec("dropout", "guided", "Fisher-guided dropout rates per sub-layer "
                    "(arXiv 2406.14005)", reads=("dropout.guided",), check=_ordered))


def schedule_rates(scores: dict[str, float], p_max: float, p_min: float,
                   schedule: str) -> dict[str, float]:
    """site -> p from the sites' Fisher scores (lower score, more dropout)."""
    names = sorted(scores, key=lambda k: scores[k])  # ascending; ties keep site order
    n = len(names)
    if n == 1:
        return {names[0]: p_max}
    if schedule == "rank":
        where = {name: i / (n - 1) for i, name in enumerate(names)}
    else:
        logs = {k: math.log(max(v, 1e-300)) for k, v in scores.items()}
        lo, hi = min(logs.values()), max(logs.values())
        where = {k: (logs[k] - lo) / ((hi - lo) or 1.0) for k in names}
    # a weighted mean of the end points: never outside [p_min, p_max], even by a rounding
    return {k: (1 - w) * p_max + w * p_min for k, w in where.items()}


@implements("guided")
def guide(model, context) -> dict:
    from cmift.data.tasks import data_fingerprint
    from cmift.dropout.fisher import fisher_for_run
    from cmift.dropout.sites import dropout_modules, find_sites, site_scores

    knobs, cfg = context.cfg.dropout.guided, context.cfg
    sites = find_sites(model)
    fisher = fisher_for_run(context.model_cfg, context.task, context.train, context.tokenizer,
                            knobs, context.device, cfg.data,
                            data_fingerprint(cfg.task.name, cfg.data.glue_dir))
    scores = site_scores(sites, fisher["tensors"])
    site_rates = schedule_rates(scores, knobs.p_max, knobs.p_min, choice(knobs.schedule))
    modules = dropout_modules(model.base_model)
    for site in sites:
        modules[site.module].p = site_rates[site.module]
    return {"rates": rates(model),
            "sites": [{"module": s.module, "kind": s.kind, "layer": s.layer,
                       "score": scores[s.module], "p": site_rates[s.module]} for s in sites],
            "fisher": {"source": choice(knobs.source), "examples": fisher["examples"],
                       "seconds": fisher["seconds"], "cache": fisher["cache"],
                       "examples_per_second": fisher["examples_per_second"]}}
