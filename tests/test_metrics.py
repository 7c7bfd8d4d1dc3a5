import evaluate
import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from cmift.data import metrics
from cmift.data.tasks import TASKS


# ----- cmift's earlier hand-written metrics: the numbers the library versions must keep -----
def _f1(pred, ref):
    tp = np.sum((pred == 1) & (ref == 1))
    fp, fn = np.sum((pred == 1) & (ref != 1)), np.sum((pred != 1) & (ref == 1))
    return 2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 0.0


def _mcc(pred, ref):
    """Gorodkin's multiclass R_K from the confusion matrix."""
    classes = np.union1d(pred, ref)
    c = np.zeros((len(classes), len(classes)))
    np.add.at(c, (np.searchsorted(classes, ref), np.searchsorted(classes, pred)), 1)
    t, p, n = c.sum(1), c.sum(0), c.sum()
    denom = np.sqrt((n * n - t @ t) * (n * n - p @ p))
    return (np.trace(c) * n - t @ p) / denom if denom > 0 else 0.0


def _pearson(x, y):
    x, y = x - x.mean(), y - y.mean()
    denom = np.sqrt((x @ x) * (y @ y))
    return x @ y / denom if denom > 0 else 0.0


def _ranks(a):
    return np.array([np.mean(np.flatnonzero(np.sort(a) == v)) + 1 for v in a])


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_keep_the_hand_written_numbers(seed):
    rng = np.random.default_rng(seed)
    n_classes = 2 if seed < 3 else 3
    ref = rng.integers(0, n_classes, 300)
    pred = np.where(rng.random(300) < 0.7, ref, rng.integers(0, n_classes, 300))
    out = metrics.task_metrics(("accuracy", "matthews_correlation"), pred, ref)
    assert out["accuracy"] == pytest.approx(np.mean(pred == ref), abs=1e-12)
    assert out["matthews_correlation"] == pytest.approx(_mcc(pred, ref), abs=1e-12)
    if n_classes == 2:
        assert metrics.task_metrics(("f1",), pred, ref)["f1"] == pytest.approx(_f1(pred, ref),
                                                                               abs=1e-12)


def test_degenerate_cases_keep_the_hand_written_numbers():
    ref, const = np.array([0, 1, 1, 0]), np.zeros(4, dtype=int)
    assert metrics.task_metrics(("matthews_correlation", "f1"), const, ref) == {
        "matthews_correlation": 0.0, "f1": 0.0}
    flat = metrics.task_metrics(("pearson", "spearmanr"), np.ones(4), np.arange(4.0))
    assert flat == {"pearson": 0.0, "spearmanr": 0.0}  # no correlation, not NaN


@pytest.mark.parametrize("seed", range(5))
def test_correlations_keep_the_hand_written_numbers_with_ties(seed):
    rng = np.random.default_rng(seed)
    ref = np.round(rng.uniform(0, 5, 200) * 5) / 5  # STS-B-like scores with many ties
    pred = ref + rng.normal(0, 1, 200)
    pred[:20] = np.round(pred[:20])
    out = metrics.task_metrics(("pearson", "spearmanr"), pred, ref)
    assert out["pearson"] == pytest.approx(_pearson(pred, ref), abs=1e-10)
    assert out["spearmanr"] == pytest.approx(_pearson(_ranks(pred), _ranks(ref)), abs=1e-10)
    assert out["spearmanr"] == pytest.approx(spearmanr(pred, ref)[0], abs=1e-12)
    assert out["pearson"] == pytest.approx(pearsonr(pred, ref)[0], abs=1e-12)


def test_task_metrics_uses_glue_names():
    out = metrics.task_metrics(("accuracy", "f1"), np.array([1, 0, 1]), np.array([1, 1, 1]))
    assert out == pytest.approx({"accuracy": 2 / 3, "f1": 0.8})
    assert out["f1"] == f1_score([1, 1, 1], [1, 0, 1])
    assert out["accuracy"] == accuracy_score([1, 1, 1], [1, 0, 1])
    assert matthews_corrcoef([0, 1], [0, 1]) == 1.0


@pytest.mark.parametrize("task", sorted(TASKS))
def test_the_local_evaluate_module_answers_like_the_runs(task):
    """evaluate.load(<folder>, task) offline: the hub glue module's config names and keys, and
    the numbers a cmift run reports."""
    spec = TASKS[task]
    assert metrics.GLUE_CONFIGS[task] == spec.metrics
    rng = np.random.default_rng(0)
    if spec.is_regression:
        ref = rng.uniform(0, 5, 50).astype(np.float32)
        pred = (ref + rng.normal(0, 1, 50)).astype(np.float32)
    else:
        ref = rng.integers(0, spec.num_labels, 50)
        pred = np.where(rng.random(50) < 0.7, ref, rng.integers(0, spec.num_labels, 50))
    module = evaluate.load(metrics.GLUE_METRIC, task, keep_in_memory=True)
    got = module.compute(predictions=pred, references=ref)
    assert got == pytest.approx(metrics.task_metrics(spec.metrics, pred, ref), abs=1e-6)


def _cmi_by_hand(probs, labels):
    """Loops over examples and classes: CMI = mean KL(p_i || Q_{y_i}); Gamma (KL form) = mean
    over i of (1/C) sum_{c != y_i} KL(Q_c || p_i); Q_c the class means."""
    n, k = probs.shape
    classes = sorted(set(labels.tolist()))
    cent = {c: probs[labels == c].mean(0) for c in classes}

    def kl(a, b):
        return sum(a[j] * (np.log(max(a[j], 1e-8)) - np.log(max(b[j], 1e-300)))
                   for j in range(k))

    cmi = sum(kl(probs[i], cent[labels[i]]) for i in range(n)) / n
    gamma = sum(sum(kl(cent[c], probs[i]) for c in classes if c != labels[i]) / len(classes)
                for i in range(n)) / n
    return cmi, gamma, cmi / gamma


@pytest.mark.parametrize("n_classes", [2, 3])
def test_cmi_diagnostics_golden(n_classes):
    rng = np.random.default_rng(n_classes)
    logits = rng.normal(0, 2, (50, n_classes))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, n_classes, 50)
    cmi, gamma, ncmi = _cmi_by_hand(probs, labels)
    out = metrics.cmi_diagnostics(np.log(probs), labels)
    assert out["cmi"] == pytest.approx(cmi, rel=1e-10)
    assert out["gamma"] == pytest.approx(gamma, rel=1e-10)
    assert out["ncmi"] == pytest.approx(ncmi, rel=1e-10)


def test_cmi_is_zero_when_each_class_predicts_one_distribution():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8]])
    out = metrics.cmi_diagnostics(np.log(probs), np.array([0, 0, 1]))
    assert out["cmi"] == pytest.approx(0.0, abs=1e-12)
    assert out["gamma"] > 0
