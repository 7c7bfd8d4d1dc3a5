"""GLUE metrics: scikit-learn and scipy, under the names `evaluate.load('glue', task)` uses
(accuracy, f1, matthews_correlation, pearson, spearmanr). The same numbers come out of the local
`evaluate` module in cmift/data/glue_metric/ (`evaluate.load(GLUE_METRIC, "mrpc")`, offline);
the training loop calls these functions directly, because importing `evaluate` pulls in
transformers' pipelines (about 2 s a run). Parity with cmift's earlier NumPy code is tested.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

GLUE_METRIC = str(Path(__file__).resolve().parent / "glue_metric")  # for evaluate.load

# evaluate's glue config name -> the metrics it reports (the hub module's keys)
GLUE_CONFIGS = {
    "cola": ("matthews_correlation",), "sst2": ("accuracy",), "mrpc": ("accuracy", "f1"),
    "qqp": ("accuracy", "f1"), "stsb": ("pearson", "spearmanr"), "mnli": ("accuracy",),
    "mnli_matched": ("accuracy",), "mnli_mismatched": ("accuracy",), "qnli": ("accuracy",),
    "rte": ("accuracy",), "wnli": ("accuracy",), "ax": ("matthews_correlation",),
    "hans": ("accuracy",),
}


def _metric(name: str):
    # imported at the first evaluation: scikit-learn costs about a second to import
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    return {
        "accuracy": lambda p, r: accuracy_score(r, p),
        # the positive class (label 1), as GLUE reports for MRPC and QQP; 0 if never present
        "f1": lambda p, r: f1_score(r, p, zero_division=0.0),
        "matthews_correlation": lambda p, r: matthews_corrcoef(r, p),
        # a constant input has no correlation: 0, as before (scipy warns and returns NaN)
        "pearson": lambda p, r: _defined(pearsonr, p, r),
        "spearmanr": lambda p, r: _defined(spearmanr, p, r),
    }[name]


def _defined(correlation, p: np.ndarray, r: np.ndarray) -> float:
    if np.ptp(p) == 0 or np.ptp(r) == 0:
        return 0.0
    return correlation(p, r)[0]


def task_metrics(names: tuple[str, ...], pred: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    pred, ref = np.asarray(pred), np.asarray(ref)
    return {name: float(_metric(name)(pred, ref)) for name in names}


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


def pair_accuracy(log_odds: np.ndarray, labels: np.ndarray) -> float:
    """Label-token tuning's second protocol: the accuracy of the binary "is k the label?"
    decisions (log-odds > 0), in expectation over the authors' dev pairs (half true, half with a
    random wrong label): 1/2 true-pair accuracy + 1/2 mean wrong-pair accuracy."""
    k = log_odds.shape[-1]
    true = np.eye(k, dtype=bool)[labels]
    said = log_odds > 0
    on_true = said[true].mean()
    on_wrong = (~said[~true]).reshape(len(labels), k - 1).mean()
    return float(0.5 * on_true + 0.5 * on_wrong)
