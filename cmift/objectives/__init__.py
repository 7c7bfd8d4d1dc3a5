"""Training objectives: one small file per method family.

Each file declares, torch-free, its method specs and knob namespaces (cmift/config/spec.py),
and implements the objective: a map from (model outputs, batch) to a dict of named loss terms
in fp32; the loop optimises terms["loss"] and logs every term. Objectives with state (CMI's
class centroids) use the hooks of `Objective`. Adding one touches one file here and one YAML in
conf/objective/ (docs/ADDING_A_METHOD.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from cmift.config.spec import discover, implementations

if TYPE_CHECKING:
    import torch

IMPLEMENTATIONS: dict[str, type] = {}


@dataclass
class Outputs:
    """What the model produced for a batch: logits, and the feature vector the head reads."""

    logits: "torch.Tensor"
    features: Optional["torch.Tensor"] = None
    # the logits are pair log-odds trained by the pair loss (tuning=lt_*, tuning.lt.loss=pairs)
    pair_loss: bool = False


# `passes(limit, train_mode=False)` yields (Outputs, labels) for `limit` training examples (a
# sample seeded by the run's seed, the same every time; all when None), without gradients, in
# eval mode (or train mode: dropout on, drawing from the global stream, which the caller must
# fork): what an objective's state is fit to.
Passes = Callable[..., Iterable[tuple[Outputs, Any]]]


class Objective:
    """Base class: the hooks the loop calls, all no-ops for a stateless objective."""

    needs_features = False  # the loop captures Outputs.features only when asked

    def __call__(self, out: Outputs, batch: dict) -> dict:
        raise NotImplementedError

    def setup(self, passes: Passes) -> None:
        """Before the first step."""

    def on_epoch_start(self, epoch: int, passes: Passes) -> None:
        """At the start of every epoch (1-based)."""

    def after_step(self) -> None:
        """After every optimiser step."""

    def discard_step(self) -> None:
        """Instead of after_step, when the step was skipped (non-finite loss): drop whatever
        the step's batches staged, so that a skipped batch leaves no trace."""

    def decoder(self, passes: Passes) -> Optional[Callable[[Outputs], Any]]:
        """Before each evaluation: a map from Outputs to class scores (argmax = prediction), or
        None to predict from the logits."""
        return None

    def state_dict(self) -> dict:
        return {}

    def to(self, device) -> None:
        """Move state to `device` (after restoring it from a checkpoint)."""

    def load_state_dict(self, state: dict) -> None:
        """Restore what state_dict returned."""


# class decorator: the implementation of the objectives `names` (registered specs)
implements = implementations(IMPLEMENTATIONS)


def build(cfg, task, **context) -> Objective:
    """The objective named by `objective.name`, from the run's config, the task and what the
    run prepared for it (`teacher` for distillation)."""
    discover()
    return IMPLEMENTATIONS[cfg.objective.name](cfg, task, **context)
