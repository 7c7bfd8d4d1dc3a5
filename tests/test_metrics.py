import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from cmift.data import metrics


@pytest.mark.parametrize("seed", range(5))
def test_classification_metrics_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n_classes = 2 if seed < 3 else 3
    ref = rng.integers(0, n_classes, 300)
    pred = np.where(rng.random(300) < 0.7, ref, rng.integers(0, n_classes, 300))
    assert metrics.accuracy(pred, ref) == pytest.approx(accuracy_score(ref, pred), abs=1e-12)
    assert metrics.matthews_correlation(pred, ref) == pytest.approx(matthews_corrcoef(ref, pred),
                                                                    abs=1e-12)
    if n_classes == 2:
        assert metrics.f1(pred, ref) == pytest.approx(f1_score(ref, pred), abs=1e-12)


def test_degenerate_cases_match_sklearn():
    ref = np.array([0, 1, 1, 0])
    const = np.zeros(4, dtype=int)
    assert metrics.matthews_correlation(const, ref) == matthews_corrcoef(ref, const) == 0.0
    assert metrics.f1(const, ref) == f1_score(ref, const, zero_division=0.0) == 0.0


@pytest.mark.parametrize("seed", range(5))
def test_correlations_match_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    ref = np.round(rng.uniform(0, 5, 200) * 5) / 5  # STS-B-like scores with many ties
    pred = ref + rng.normal(0, 1, 200)
    pred[:20] = np.round(pred[:20])
    assert metrics.pearson(pred, ref) == pytest.approx(pearsonr(pred, ref)[0], abs=1e-10)
    assert metrics.spearmanr(pred, ref) == pytest.approx(spearmanr(pred, ref)[0], abs=1e-10)


def test_task_metrics_uses_glue_names():
    out = metrics.task_metrics(("accuracy", "f1"), np.array([1, 0, 1]), np.array([1, 1, 1]))
    assert out == pytest.approx({"accuracy": 2 / 3, "f1": 0.8})


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
