"""The CMI maths of the group's released code (METHOD.md, arXiv 2601.02543): both Gamma forms
with their gradients, the log-r rule, sigmax and l2_center, train-mode centroid passes, and
the ncmi objective; each against an independent float64 NumPy computation."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from cmift.data.tasks import TASKS
from cmift.objectives import Outputs, build
from cmift.objectives.centroids import Centroids
from cmift.objectives.cmi_terms import FeatureMap, batch_gamma, cmi_rows, gamma_rows
from cmift.training.run import run
from conftest import compose, dev_evals


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_gamma_kl(z, y, q):
    """(1/B) sum_i (1/C) sum_{c != y_i} KL(Q_c || softmax(z_i)), in float64."""
    log_r = np_log_softmax(z)
    c_count = q.shape[0]
    total = 0.0
    for i in range(len(y)):
        for c in range(c_count):
            if c != y[i]:
                total += np.sum(q[c] * (np.log(np.clip(q[c], 1e-8, None)) - log_r[i]))
    return total / c_count / len(y)


def np_gamma_ce(z, y, q):
    r = np.exp(np_log_softmax(z))
    c_count = q.shape[0]
    total = 0.0
    for i in range(len(y)):
        for c in range(c_count):
            if c != y[i]:
                total += -np.sum(r[i] * np.log(np.clip(q[c], 1e-8, None)))
    return total / (c_count - 1) / len(y)


def np_grad(f, z, eps=1e-6):
    """Central finite differences of f at z, in float64: an independent gradient."""
    g = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        up, down = z.copy(), z.copy()
        up[idx] += eps
        down[idx] -= eps
        g[idx] = (f(up) - f(down)) / (2 * eps)
    return g


def torch_value_and_grad(z, y, q, form):
    zt = torch.tensor(z, dtype=torch.float64, requires_grad=True)
    value = batch_gamma(torch.log_softmax(zt, -1), torch.tensor(y), torch.tensor(q), form)
    value.backward()
    return value.item(), zt.grad.numpy()


RNG = np.random.default_rng(3)
Z = RNG.normal(0, 3, (6, 4))
YS = np.array([0, 1, 2, 3, 1, 0])
QS = RNG.dirichlet(np.ones(4), size=4)
QS[2, 1] = 0.0  # a zero centroid entry: clamped before its log


@pytest.mark.parametrize("form, reference", [("kl", np_gamma_kl), ("cross_entropy", np_gamma_ce)])
def test_gamma_forms_golden_with_gradients(form, reference):
    value, grad = torch_value_and_grad(Z, YS, QS, form)
    assert value == pytest.approx(reference(Z, YS, QS), rel=1e-9)
    np.testing.assert_allclose(grad, np_grad(lambda z: reference(z, YS, QS), Z), atol=1e-6)


def test_log_r_from_log_softmax_keeps_the_gradient_under_the_clamp():
    """logits [4, 0, -25], y = 0, the other classes' centroids [.3, .7-1e-9, 1e-9] and [0, 0, 1]:
    r_3 = 2.5e-13 sits under the 1e-8 clamp. With log r from log_softmax, Gamma (KL form) is
    10.408 and its gradient [.555, -.221, -.333]; log(clamp(softmax)) gave 6.876 and
    [.227, -.227, 0] (the third coordinate's gradient lost)."""
    z = np.array([[4.0, 0.0, -25.0]])
    y = np.array([0])
    q = np.array([[1 / 3, 1 / 3, 1 / 3], [0.3, 0.7 - 1e-9, 1e-9], [0.0, 0.0, 1.0]])
    want = np_gamma_kl(z, y, q)
    assert want == pytest.approx(10.408, abs=1e-3)
    value, grad = torch_value_and_grad(z, y, q, "kl")
    assert value == pytest.approx(want, rel=1e-9)
    np.testing.assert_allclose(grad[0], [0.5547, -0.2213, -0.3333], atol=1e-4)
    np.testing.assert_allclose(grad, np_grad(lambda v: np_gamma_kl(v, y, q), z), atol=1e-6)
    zt = torch.tensor(z, requires_grad=True)  # the old way, for the record
    clamped = torch.log(torch.softmax(zt, -1).clamp_min(1e-8))
    old = batch_gamma(clamped, torch.tensor(y), torch.tensor(q), "kl")
    old.backward()
    assert old.item() == pytest.approx(6.876, abs=1e-3)
    np.testing.assert_allclose(zt.grad[0].numpy(), [0.2274, -0.2274, 0.0], atol=1e-4)


def _feature_map(**knobs):
    cfg = compose("objective=min_cmi", *(f"objective.cmi.{k}={v}" for k, v in knobs.items()))
    return FeatureMap(cfg.objective.cmi)


def np_sigmax(x):
    s = 1 / (1 + np.exp(-x))
    return s / s.sum(-1, keepdims=True)


def test_sigmax_over_l2_centred_features_golden():
    fm = _feature_map(feature_map="sigmax", feature_norm="l2_center", feature_temperature=0.2,
                      center_momentum=0.9)
    h1, h2 = RNG.normal(0.5, 1, (5, 8)), RNG.normal(0.5, 1, (5, 8))

    def expected(h, mu):
        x = (h - mu) / np.linalg.norm(h - mu, axis=1, keepdims=True) / 0.2
        return np_sigmax(x)

    # the first training batch starts the running mean; the next one moves it by momentum 0.9
    r1 = fm.log_r(Outputs(None, torch.tensor(h1, dtype=torch.float32)), training=True).exp()
    mu1 = h1.mean(0)
    np.testing.assert_allclose(r1.numpy(), expected(h1, mu1), rtol=1e-5)
    fm.commit()
    r2 = fm.log_r(Outputs(None, torch.tensor(h2, dtype=torch.float32)), training=True).exp()
    mu2 = 0.9 * mu1 + 0.1 * h2.mean(0)
    np.testing.assert_allclose(r2.numpy(), expected(h2, mu2), rtol=1e-5)
    fm.discard()  # a skipped step: the mean stays where the last kept step left it
    np.testing.assert_allclose(fm.center.numpy(), mu1, rtol=1e-6)
    # a checkpoint round trip keeps it
    other = _feature_map(feature_map="sigmax", feature_norm="l2_center")
    other.load_state_dict(fm.state_dict())
    assert torch.equal(other.center, fm.center)


def test_anchor_centroids_are_the_released_codes():
    c = Centroids(3, 6, 0.99)
    c.anchor()
    x = np.zeros((3, 6))
    x[:, :3] = 10 * np.eye(3)
    np.testing.assert_allclose(c.q.numpy(), np_sigmax(x + 1e-6), rtol=1e-6)


def test_ncmi_loss_golden():
    cfg = compose("objective=ncmi", "objective.cmi.feature_norm=none",
                  "objective.cmi.feature_temperature=0.5")
    objective = build(cfg, TASKS["mrpc"])
    h = RNG.normal(0, 1, (6, 5))
    y = np.array([0, 1, 1, 0, 1, 0])
    terms = objective(Outputs(torch.zeros(6, 2), torch.tensor(h, dtype=torch.float32)),
                      {"labels": torch.tensor(y)})
    x = np.zeros((2, 5))
    x[:, :2] = 10 * np.eye(2)
    q = np_sigmax(x + 1e-6)
    r = np_sigmax(h / 0.5)
    cmi = np.sum(r * (np.log(r) - np.log(q[y])), axis=1)
    kl_qr = np.array([[np.sum(q[c] * (np.log(q[c]) - np.log(r[i]))) for c in range(2)]
                      for i in range(6)])
    gamma = np.array([kl_qr[i, 1 - y[i]] / 2 for i in range(6)])
    assert terms["loss"].item() == pytest.approx(np.mean(cmi / gamma), rel=1e-4)
    assert set(terms) == {"cmi", "gamma", "loss"}  # no cross-entropy


def test_ncmi_centroid_decoding_is_the_nearest_class_mean():
    cfg = compose("objective=ncmi", "objective.cmi.feature_norm=none")
    objective = build(cfg, TASKS["mrpc"])
    h = torch.tensor(RNG.normal(0, 1, (8, 4)), dtype=torch.float32)
    y = torch.tensor([0, 1, 0, 1, 1, 0, 0, 1])

    def passes(limit, train_mode=False):
        return [(Outputs(torch.zeros(8, 2), h), y)]

    scores = objective.decoder(passes)(Outputs(torch.zeros(8, 2), h)).numpy()
    r = np_sigmax(h.numpy() / 0.2)
    means = np.stack([r[y.numpy() == c].mean(0) for c in (0, 1)])
    kl = np.array([[np.sum(r[i] * np.log(r[i] / means[c])) for c in (0, 1)] for i in range(8)])
    np.testing.assert_allclose(-scores, kl, rtol=1e-4, atol=1e-7)
    assert objective.decoder is not None and build(
        compose("objective=ncmi", "objective.ncmi.decode=head"), TASKS["mrpc"]).decoder(
        passes) is None


def _tiny(glue_dir, tmp_path, name, *overrides):
    cfg = compose("model=tiny", "train.max_steps=12", "train.eval_every=6", "train.lr=1e-3",
                  f"data.glue_dir={glue_dir}", "data.max_eval_samples=64",
                  "data.max_train_samples=256", *overrides)
    (tmp_path / name).mkdir()
    return run(cfg, tmp_path / name)


def test_train_mode_centroid_passes_keep_lam_zero_equal_to_ce(glue_dir, tmp_path):
    ce = _tiny(glue_dir, tmp_path, "ce", "objective=ce")
    zero = _tiny(glue_dir, tmp_path, "zero", "objective=min_cmi", "objective.cmi.lam=0",
                 "objective.cmi.centroid_mode=train", "objective.cmi.centroid_update=epoch",
                 "train.max_steps=20", "train.eval_every=10")
    ce_long = _tiny(glue_dir, tmp_path, "ce20", "objective=ce", "train.max_steps=20",
                    "train.eval_every=10")
    assert dev_evals(zero) == dev_evals(ce_long) and ce["status"] == "ok"


def test_train_mode_passes_use_dropout_from_their_own_stream(glue_dir, tmp_path):
    out = {}
    for mode in ("eval", "train"):
        _tiny(glue_dir, tmp_path, mode, "objective=min_cmi", f"objective.cmi.centroid_mode={mode}",
              "objective.cmi.lam=0.5", "train.max_steps=2")
        out[mode] = [json.loads(x)["cmi"] for x in
                     (tmp_path / mode / "steps.jsonl").read_text().splitlines()]
    assert out["eval"][0] != out["train"][0]  # other centroids: dropout was on in the passes


@pytest.mark.parametrize("overrides", [[], ["objective.ncmi.train_centroids=ema"],
                                       ["objective.ncmi.train_centroids=epoch",
                                        "objective.ncmi.decode=head"]])
def test_ncmi_tiny_run(glue_dir, tmp_path, overrides):
    record = _tiny(glue_dir, tmp_path, "ncmi", "objective=ncmi", *overrides)
    assert record["status"] == "ok" and {"accuracy", "f1", "score"} <= set(record["final"])
    preds = (tmp_path / "ncmi" / "predictions_validation.tsv").read_text().splitlines()
    dev_rows = len((Path(glue_dir) / "MRPC" / "dev.tsv").read_text().splitlines()) - 1
    assert len(preds) == 1 + min(64, dev_rows)  # the real dev set, or CI's generated one
    assert preds[0].startswith("index\tlabel\tprediction")
    steps = [json.loads(x) for x in (tmp_path / "ncmi" / "steps.jsonl").read_text().splitlines()]
    assert all(np.isfinite(s["loss"]) for s in steps) and "ce" not in steps[0]


def test_gamma_rows_and_cmi_rows_match_their_batch_means():
    log_r = torch.log_softmax(torch.tensor(Z), -1)
    y, q = torch.tensor(YS), torch.tensor(QS)
    assert cmi_rows(log_r, y, q).shape == (6,)
    assert gamma_rows(log_r, y, q, "kl").mean().item() == pytest.approx(np_gamma_kl(Z, YS, QS))
