"""`kd` and `max_cmi_kd`: a student trained on the teacher's logits with the `distillation` loss.

The student loss is the same function for both objectives; only the teacher differs (trained
with ce or with max_cmi; see cmift/teacher.py). Losses (METHOD.md, arXiv 2402.11148):

  kd:    (1 - alpha) CE(z, y) + alpha T^2 KL(softmax(v/T) || softmax(z/T))
  ttm:   CE(z, y) + beta KL(phat || q),                   phat = softmax(gamma v)
  wttm:  CE(z, y) + beta (1/B) sum_i U_i KL(phat_i || q_i), U_i = sum_k p_i(k)^gamma
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from cmift.objectives import Objective, Outputs, register

EPS = 1e-8


def kl_rows(p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """KL(p_i || q_i) for every row i, with p clamped before its log."""
    return (p * (torch.log(p.clamp_min(EPS)) - log_q)).sum(-1)


def kd_terms(z, v, y, temperature: float, alpha: float) -> dict[str, torch.Tensor]:
    ce = F.cross_entropy(z, y)
    p_t = torch.softmax(v / temperature, -1)
    kl = kl_rows(p_t, torch.log_softmax(z / temperature, -1)).mean()
    distill = temperature ** 2 * kl
    return {"ce": ce, "kd": distill, "loss": (1 - alpha) * ce + alpha * distill}


def tempered(v: torch.Tensor, gamma: float) -> torch.Tensor:
    """phat = softmax(gamma v) = p^gamma / sum_k p(k)^gamma: the teacher tempered by a power."""
    return torch.softmax(gamma * v, -1)


def ttm_terms(z, v, y, gamma: float, beta: float) -> dict[str, torch.Tensor]:
    ce = F.cross_entropy(z, y)
    kl = kl_rows(tempered(v, gamma), torch.log_softmax(z, -1)).mean()
    return {"ce": ce, "kd": kl, "loss": ce + beta * kl}


def wttm_weights(v: torch.Tensor, gamma: float) -> torch.Tensor:
    """U_i = sum_k p_i(k)^gamma, the power sum of the teacher's distribution."""
    return torch.softmax(v, -1).pow(gamma).sum(-1)


def wttm_terms(z, v, y, gamma: float, beta: float) -> dict[str, torch.Tensor]:
    ce = F.cross_entropy(z, y)
    kl = (wttm_weights(v, gamma) * kl_rows(tempered(v, gamma), torch.log_softmax(z, -1))).mean()
    return {"ce": ce, "kd": kl, "loss": ce + beta * kl}


def distillation_terms(name: str, d, z, v, y) -> dict[str, torch.Tensor]:
    z, v = z.float(), v.float()
    if name == "kd":
        return kd_terms(z, v, y, d.temperature, d.alpha)
    if name == "ttm":
        return ttm_terms(z, v, y, d.gamma, d.beta)
    if name == "wttm":
        return wttm_terms(z, v, y, d.gamma, d.beta)
    raise ValueError(f"unknown distillation loss {name!r}")


class CachedTeacher:
    """The teacher's stored training-set logits, looked up by the batch's example indices: a
    student step runs no teacher forward pass."""

    def __init__(self, logits: torch.Tensor):
        self.logits = logits  # (n_train, C), one row per training example in order

    def __call__(self, batch: dict) -> torch.Tensor:
        if self.logits.device != batch["index"].device:
            self.logits = self.logits.to(batch["index"].device)
        return self.logits[batch["index"]]


class LiveTeacher:
    """The teacher model run on every student batch (eval mode, no gradients): the usual way to
    distil, kept so the saving of the cached logits can be measured (bench/)."""

    def __init__(self, forward: Callable[[dict], Outputs]):
        self.forward = forward  # cmift.loop.Forward around the teacher model, in eval mode

    def __call__(self, batch: dict) -> torch.Tensor:
        with torch.no_grad():
            return self.forward(batch).logits


@register("kd")
@register("max_cmi_kd")
class Distillation(Objective):
    """Student objective: the `distillation` loss against the teacher's logits for the batch,
    from a CachedTeacher (default) or a LiveTeacher."""

    def __init__(self, cfg, task, teacher: Callable[[dict], torch.Tensor] | None = None, **_):
        if teacher is None:
            raise ValueError("distillation objectives need a teacher (cached logits or a model)")
        self.d = cfg.distillation
        self.teacher = teacher

    def __call__(self, out: Outputs, batch: dict) -> dict[str, torch.Tensor]:
        v = self.teacher(batch)
        return distillation_terms(self.d.name, self.d, out.logits, v, batch["labels"])
