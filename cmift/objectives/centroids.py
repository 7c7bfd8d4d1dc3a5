"""Class centroids Q (C x K): Q_c estimates E[r | Y = c] (METHOD.md "Class centroids").

State, not a parameter: no gradient flows into Q. It is the centroid step of CMI's alternating
minimisation; the model step is ordinary SGD with Q fixed.
"""

from __future__ import annotations

from typing import Iterable

from cmift.lazy import torch


class Centroids:
    def __init__(self, n_classes: int, dim: int, momentum: float, device=None):
        self.momentum = momentum
        # Until a class is seen its centroid is uniform: a neutral, finite reference.
        self.q = torch.full((n_classes, dim), 1.0 / dim, dtype=torch.float32, device=device)

    def fit(self, batches: Iterable[tuple]) -> None:
        """Q_c = mean of r over the examples of class c, from (r, y) batches; a class with no
        example keeps its previous centroid."""
        with torch.no_grad():
            sums = torch.zeros_like(self.q)
            counts = torch.zeros(self.q.shape[0], dtype=torch.float32, device=self.q.device)
            for r, y in batches:
                sums.index_add_(0, y, r.float())
                counts.index_add_(0, y, torch.ones_like(y, dtype=torch.float32))
            _over_ranks(sums, counts)
            seen = counts > 0
            self.q[seen] = _rows_sum_to_one(sums[seen] / counts[seen, None])

    def ema(self, r, y) -> None:
        """Q_c <- m Q_c + (1 - m) mean_{i: y_i = c} r_i for each class c present in the batch;
        rows of r that are not finite are left out (a NaN never enters a centroid)."""
        with torch.no_grad():
            r = r.detach().float()
            finite = torch.isfinite(r).all(-1)
            r = torch.where(finite[:, None], r, torch.zeros_like(r))
            sums = torch.zeros_like(self.q).index_add_(0, y, r)
            counts = torch.zeros(self.q.shape[0], dtype=torch.float32, device=self.q.device)
            counts.index_add_(0, y, finite.float())
            _over_ranks(sums, counts)
            present = (counts > 0)[:, None]
            means = sums / counts.clamp(min=1)[:, None]
            m = self.momentum
            # torch.where keeps absent classes bit-for-bit; no host sync on which are present
            self.q = torch.where(present, _rows_sum_to_one(m * self.q + (1 - m) * means), self.q)

    def anchor(self) -> None:
        """The released NCMI code's fixed centroids: Q_c = sigmax(10 [I_C | 0]_c + 1e-6), a
        near-uniform vector with a bump at coordinate c (needs K >= C)."""
        n_classes, dim = self.q.shape
        bumps = torch.zeros_like(self.q)
        bumps[:, :n_classes] = 10.0 * torch.eye(n_classes, device=self.q.device)
        s = torch.sigmoid(bumps + 1e-6)
        self.q = s / s.sum(-1, keepdim=True)

    def state_dict(self) -> dict:
        return {"q": self.q.detach().cpu().clone(), "momentum": self.momentum}

    def load_state_dict(self, state: dict) -> None:
        self.q = state["q"].to(self.q.device, torch.float32)
        self.momentum = state["momentum"]

    def to(self, device) -> "Centroids":
        self.q = self.q.to(device)
        return self


def _over_ranks(sums, counts) -> None:
    """Data-parallel runs: class sums and counts over every rank's examples, so every rank fits
    the same centroids (a mean is unchanged where ranks saw the same examples)."""
    from cmift.ranks import RANKS

    RANKS.sum_(sums)
    RANKS.sum_(counts)


def _rows_sum_to_one(q):
    return q / q.sum(dim=1, keepdim=True)
