"""`kd` and `max_cmi_kd`: a student trained on the teacher's logits with the `distillation` loss.

The student loss is the same function for both objectives; only the teacher differs (trained
with ce or with max_cmi; see cmift/training/teacher.py). Losses (METHOD.md, arXiv 2402.11148):

  kd:    (1 - alpha) CE(z, y) + alpha T^2 KL(softmax(v/T) || softmax(z/T))
  ttm:   CE(z, y) + beta KL(phat || q),                   phat = softmax(gamma v)
  wttm:  CE(z, y) + beta (1/B) sum_i U_i KL(phat_i || q_i), U_i = sum_k p_i(k)^gamma
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from cmift.config.spec import MethodSpec, at_least, between, greater, knob, register, register_knobs
from cmift.lazy import F, torch
from cmift.objectives import Objective, Outputs, implements
from cmift.objectives.divergence import kl_rows


@register_knobs("distillation.kd")
@dataclass
class KDKnobs:
    temperature: float = knob(2.0, greater(0))  # T
    alpha: float = knob(0.5, between(0, 1))  # weight of the distillation term


@register_knobs("distillation.ttm")
@dataclass
class TTMKnobs:
    gamma: float = knob(0.5, greater(0))  # the power applied to the teacher's probabilities
    beta: float = knob(2.0, at_least(0))  # weight of the distillation term


@register_knobs("distillation.wttm")
@dataclass
class WTTMKnobs:
    gamma: float = knob(0.5, greater(0))
    beta: float = knob(1.6, at_least(0))  # the paper's ImageNet value


register(
    MethodSpec("objective", "kd", "a ce teacher, then the student with the distillation loss",
               teacher="ce", regression=False),
    MethodSpec("objective", "max_cmi_kd", "a max_cmi teacher (objective.cmi.* are its knobs), "
               "then the student with the distillation loss", teacher="max_cmi",
               reads=("objective.cmi",), tuned=("objective.cmi.lam", "objective.cmi.beta"),
               regression=False, version=2),  # the max_cmi teacher's version
    MethodSpec("distillation", "none", "no distillation: trained directly on the task"),
    *(MethodSpec("distillation", name, f"{name.upper()} student loss",
                 reads=(f"distillation.{name}",),
                 tuned=tuple(f"distillation.{name}.{k}" for k in knobs))
      for name, knobs in (("kd", ("temperature", "alpha")), ("ttm", ("gamma", "beta")),
                          ("wttm", ("gamma", "beta")))),
)

def kd_terms(z, v, y, temperature: float, alpha: float) -> dict:
    ce = F.cross_entropy(z, y)
    p_t = torch.softmax(v / temperature, -1)
    kl = kl_rows(p_t, torch.log_softmax(z / temperature, -1)).mean()
    distill = temperature ** 2 * kl
    return {"ce": ce, "kd": distill, "loss": (1 - alpha) * ce + alpha * distill}


def tempered(v, gamma: float):
    """phat = softmax(gamma v) = p^gamma / sum_k p(k)^gamma: the teacher tempered by a power."""
    return torch.softmax(gamma * v, -1)


def ttm_terms(z, v, y, gamma: float, beta: float) -> dict:
    ce = F.cross_entropy(z, y)
    kl = kl_rows(tempered(v, gamma), torch.log_softmax(z, -1)).mean()
    return {"ce": ce, "kd": kl, "loss": ce + beta * kl}


def wttm_weights(v, gamma: float):
    """U_i = sum_k p_i(k)^gamma, the power sum of the teacher's distribution."""
    return torch.softmax(v, -1).pow(gamma).sum(-1)


def wttm_terms(z, v, y, gamma: float, beta: float) -> dict:
    ce = F.cross_entropy(z, y)
    kl = (wttm_weights(v, gamma) * kl_rows(tempered(v, gamma), torch.log_softmax(z, -1))).mean()
    return {"ce": ce, "kd": kl, "loss": ce + beta * kl}


def distillation_terms(cfg, z, v, y) -> dict:
    """The loss named by `distillation.name`, with the knobs of its namespace."""
    name = cfg.distillation.name
    knobs = cfg.distillation[name]
    z, v = z.float(), v.float()
    if name == "kd":
        return kd_terms(z, v, y, knobs.temperature, knobs.alpha)
    return LOSSES[name](z, v, y, knobs.gamma, knobs.beta)


LOSSES = {"kd": kd_terms, "ttm": ttm_terms, "wttm": wttm_terms}


class CachedTeacher:
    """The teacher's stored training-set logits, looked up by the batch's example indices: a
    student step runs no teacher forward pass."""

    def __init__(self, logits):
        self.logits = logits  # (n_train, C), one row per training example in order

    def __call__(self, batch: dict):
        if self.logits.device != batch["index"].device:
            self.logits = self.logits.to(batch["index"].device)
        return self.logits[batch["index"]]


class LiveTeacher:
    """The teacher model run on every student batch (eval mode, no gradients): the usual way to
    distil, kept so the saving of the cached logits can be measured (bench/)."""

    def __init__(self, forward: Callable[[dict], Outputs]):
        self.forward = forward  # cmift.loop.Forward around the teacher model, in eval mode

    def __call__(self, batch: dict):
        with torch.no_grad():
            return self.forward(batch).logits


@implements("kd", "max_cmi_kd")
class Distillation(Objective):
    """Student objective: the `distillation` loss against the teacher's logits for the batch,
    from a CachedTeacher (default) or a LiveTeacher."""

    def __init__(self, cfg, task, teacher: Callable[[dict], object] | None = None, **_):
        if teacher is None:
            raise ValueError("distillation objectives need a teacher (cached logits or a model)")
        self.cfg = cfg
        self.teacher = teacher

    def __call__(self, out: Outputs, batch: dict) -> dict:
        v = self.teacher(batch)
        return distillation_terms(self.cfg, out.logits, v, batch["labels"])
