"""GLUE metrics computed locally (no hub; parity with scikit-learn / scipy is tested).

Names follow `evaluate.load('glue', task)`: accuracy, f1, matthews_correlation, pearson,
spearmanr. All take NumPy arrays of predictions and references.
"""

from __future__ import annotations

import numpy as np


def accuracy(pred: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean(pred == ref))


def f1(pred: np.ndarray, ref: np.ndarray) -> float:
    """Binary F1 of the positive class (label 1), as GLUE reports for MRPC and QQP."""
    tp = np.sum((pred == 1) & (ref == 1))
    fp = np.sum((pred == 1) & (ref != 1))
    fn = np.sum((pred != 1) & (ref == 1))
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom else 0.0


def matthews_correlation(pred: np.ndarray, ref: np.ndarray) -> float:
    """Multiclass Matthews correlation (Gorodkin's R_K), from the confusion matrix."""
    classes = np.union1d(pred, ref)
    c = np.zeros((len(classes), len(classes)), dtype=np.float64)
    np.add.at(c, (np.searchsorted(classes, ref), np.searchsorted(classes, pred)), 1)
    t, p = c.sum(axis=1), c.sum(axis=0)
    n, correct = c.sum(), np.trace(c)
    cov_yp = correct * n - t @ p
    cov_yy = n * n - t @ t
    cov_pp = n * n - p @ p
    denom = np.sqrt(cov_yy * cov_pp)
    return float(cov_yp / denom) if denom > 0 else 0.0


def pearson(pred: np.ndarray, ref: np.ndarray) -> float:
    x = pred - pred.mean()
    y = ref - ref.mean()
    denom = np.sqrt((x @ x) * (y @ y))
    return float(x @ y / denom) if denom > 0 else 0.0


def _average_ranks(a: np.ndarray) -> np.ndarray:
    """1-based ranks with ties given their average rank."""
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    # start index of each run of equal values, and its length
    starts = np.flatnonzero(np.r_[True, sorted_a[1:] != sorted_a[:-1]])
    lengths = np.diff(np.r_[starts, len(a)])
    avg = starts + (lengths + 1) / 2.0
    ranks = np.empty(len(a), dtype=np.float64)
    ranks[order] = np.repeat(avg, lengths)
    return ranks


def spearmanr(pred: np.ndarray, ref: np.ndarray) -> float:
    return pearson(_average_ranks(pred), _average_ranks(ref))


METRICS = {
    "accuracy": accuracy,
    "f1": f1,
    "matthews_correlation": matthews_correlation,
    "pearson": pearson,
    "spearmanr": spearmanr,
}


def task_metrics(names: tuple[str, ...], pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    pred, ref = np.asarray(pred), np.asarray(ref)
    return {name: METRICS[name](pred, ref) for name in names}


# ----- CMI diagnostics -----------------------------------------------------------------------
# Dev-set diagnostics in output space (METHOD.md "Diagnostics"): centroids Q_c are the mean
# prediction of each class on this dev pass; CMI = mean KL(q_i || Q_{y_i}); Gamma in the KL form
# of the released NCMI code, mean over i of (1/C) sum_{c != y_i} KL(Q_c || q_i) (C: the classes
# present); NCMI = CMI / Gamma.
EPS = 1e-8


def cmi_diagnostics(log_probs: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """From the model's log-probabilities (log_softmax of the logits) and the labels."""
    log_p = np.asarray(log_probs, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.exp(log_p)
    present = np.unique(labels)
    centroids = np.full_like(probs[:1].repeat(probs.shape[1], 0), 1.0 / probs.shape[1])
    for c in present:
        centroids[c] = probs[labels == c].mean(axis=0)
    log_q = np.log(np.clip(centroids, EPS, None))
    cmi = float(np.mean(np.sum(probs * (log_p - log_q[labels]), axis=1)))
    if len(present) < 2:
        return {"cmi": cmi, "gamma": float("nan"), "ncmi": float("nan")}
    q = centroids[present]
    kl = np.sum(q * log_q[present], axis=1)[None, :] - log_p @ q.T  # (N, |present|)
    own = labels[:, None] == present[None, :]
    # a KL is >= 0; rounding can leave -1e-17 when every prediction is the same
    gamma = max(0.0, float(np.mean(np.sum(np.where(own, 0.0, kl), axis=1) / len(present))))
    return {"cmi": cmi, "gamma": gamma, "ncmi": cmi / gamma if gamma > 0 else float("nan")}
