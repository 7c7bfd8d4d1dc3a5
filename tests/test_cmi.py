"""CMI objectives: golden values against NumPy, centroid updates, and their effect on training."""

import copy
import json

import numpy as np
import pytest
import torch

from cmift.config.spec import ConfigError
from cmift.config.validate import validate
from cmift.data.tasks import TASKS
from cmift.objectives import Outputs, build
from cmift.objectives.centroids import Centroids
from cmift.objectives.cmi_terms import FeatureMap, batch_cmi, batch_gamma
from cmift.training.run import run
from conftest import compose, dev_evals

RNG = np.random.default_rng(0)
R = RNG.dirichlet(np.ones(5), size=12)  # 12 examples, K = 5
Y = np.array([0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 2, 1])
Q = RNG.dirichlet(np.ones(5), size=3)  # 3 classes
Q[1, 2] = 0.0  # a zero entry: the clamp at 1e-8 must be applied before the log


def np_cmi(r, y, q):
    total = 0.0
    for i in range(len(y)):
        total += sum(r[i, k] * (np.log(max(r[i, k], 1e-8)) - np.log(max(q[y[i], k], 1e-8)))
                     for k in range(r.shape[1]))
    return total / len(y)


def np_gamma(r, y, q):
    c = q.shape[0]
    total = 0.0
    for i in range(len(y)):
        for cls in range(c):
            if cls != y[i]:
                total += -sum(r[i, k] * np.log(max(q[cls, k], 1e-8))
                              for k in range(r.shape[1])) / (c - 1)
    return total / len(y)


def t(a, dtype=torch.float32):
    return torch.tensor(a, dtype=dtype)


def test_batch_cmi_and_gamma_golden():
    log_r, y, q = torch.log(t(R)), t(Y, torch.long), t(Q)
    assert batch_cmi(log_r, y, q).item() == pytest.approx(np_cmi(R, Y, Q), rel=1e-5)
    gamma = batch_gamma(log_r, y, q, "cross_entropy")
    assert gamma.item() == pytest.approx(np_gamma(R, Y, Q), rel=1e-5)
    ncmi = (batch_cmi(log_r, y, q) / gamma).item()
    assert ncmi == pytest.approx(np_cmi(R, Y, Q) / np_gamma(R, Y, Q), rel=1e-5)


def _feature_map(**knobs):
    c = compose("objective=min_cmi", *(f"objective.cmi.{k}={v}" for k, v in knobs.items()))
    return FeatureMap(c.objective.cmi)


def test_feature_distribution_standardises_then_tempers():
    h = RNG.normal(0.1, 0.05, size=(4, 8))
    z = (h - h.mean(1, keepdims=True)) / (h.std(1, keepdims=True) + 1e-6)  # eps as in cmift
    for tau in (1.0, 0.5):
        want = np.exp(z / tau) / np.exp(z / tau).sum(1, keepdims=True)
        got = _feature_map(feature_temperature=tau).log_r(Outputs(logits=None, features=t(h)))
        np.testing.assert_allclose(got.exp().numpy(), want, rtol=1e-4)
    raw = _feature_map(feature_norm="none").log_r(Outputs(logits=None, features=t(h)))
    np.testing.assert_allclose(raw.exp().numpy(), np.exp(h) / np.exp(h).sum(1, keepdims=True),
                               rtol=1e-5)
    logits = RNG.normal(size=(4, 3))
    out = _feature_map(space="output").log_r(Outputs(logits=t(logits)))
    np.testing.assert_allclose(out.exp().numpy(),
                               np.exp(logits) / np.exp(logits).sum(1, keepdims=True), rtol=1e-5)


def test_centroid_fit_is_the_class_mean():
    c = Centroids(3, 5, momentum=0.9)
    c.fit([(t(R[:6]), t(Y[:6], torch.long)), (t(R[6:]), t(Y[6:], torch.long))])
    want = np.stack([R[Y == k].mean(0) for k in range(3)])
    np.testing.assert_allclose(c.q.numpy(), want / want.sum(1, keepdims=True), rtol=1e-6)


def test_centroid_ema_golden_and_missing_class_unchanged():
    c = Centroids(3, 5, momentum=0.9)
    c.q = t(Q)
    before = c.q.clone()
    batch = Y[:4] != 2  # classes 0 and 1 only
    c.ema(t(R[:4][batch]), t(Y[:4][batch], torch.long))
    want = Q.copy()
    for k in (0, 1):
        row = 0.9 * Q[k] + 0.1 * R[:4][batch][Y[:4][batch] == k].mean(0)
        want[k] = row / row.sum()
    np.testing.assert_allclose(c.q.numpy(), want, rtol=1e-6)
    assert torch.equal(c.q[2], before[2])  # class 2 was not in the batch: bit-for-bit unchanged


def test_centroids_state_round_trip():
    cfg = compose("objective=min_cmi")
    obj = build(cfg, TASKS["mrpc"])
    obj.centroids = Centroids(2, 5, 0.99)
    obj.centroids.q = t(Q[:2])
    other = build(cfg, TASKS["mrpc"])
    other.load_state_dict(copy.deepcopy(obj.state_dict()))
    assert torch.equal(other.centroids.q, obj.centroids.q)


def test_cmi_objective_on_regression_is_refused():
    with pytest.raises(ConfigError, match="objective='min_cmi'.*stsb is regression"):
        validate(compose("task=stsb", "objective=min_cmi"))
    validate(compose("task=stsb", "objective=ce"))


@pytest.mark.parametrize("key, value", [("objective.cmi.lam", -0.1), ("objective.cmi.beta", -1),
                                        ("objective.cmi.momentum", 1.0),
                                        ("objective.cmi.feature_temperature", 0)])
def test_bad_cmi_knobs_are_refused(key, value):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose("objective=min_cmi", f"{key}={value}"))


def _tiny_run(glue_dir, tmp_path, name, *overrides):
    cfg = compose("model=tiny", "train.max_steps=12", "train.eval_every=6", "train.lr=1e-3",
                  f"data.glue_dir={glue_dir}", "data.max_eval_samples=64", *overrides)
    (tmp_path / name).mkdir()
    return run(cfg, tmp_path / name)


@pytest.mark.parametrize("space", ["feature", "output"])
def test_min_cmi_with_zero_weights_is_exactly_ce(glue_dir, tmp_path, space):
    ce = _tiny_run(glue_dir, tmp_path, "ce", "objective=ce")
    zero = _tiny_run(glue_dir, tmp_path, "zero", "objective=min_cmi", "objective.cmi.lam=0",
                     "objective.cmi.beta=0", f"objective.cmi.space={space}")
    assert dev_evals(ce) == dev_evals(zero)
    steps = [json.loads(x) for x in (tmp_path / "zero" / "steps.jsonl").read_text().splitlines()]
    assert {"ce", "cmi", "gamma", "loss"} <= set(steps[0]) and steps[0]["loss"] == steps[0]["ce"]


def test_cmi_runs_log_terms_and_dev_diagnostics(glue_dir, tmp_path):
    out = _tiny_run(glue_dir, tmp_path, "epoch", "objective=cmic",
                    "objective.cmi.centroid_update=epoch", "train.max_steps=40",
                    "train.eval_every=20", "data.max_train_samples=160", "train.batch_size=8")
    assert out["status"] == "ok" and len(out["evals"]) == 2
    assert {"cmi", "gamma", "ncmi"} <= set(out["final"])


def _one_step_cmi(objective_name, lam):
    """Batch CMI (output space, fixed centroids) after one SGD step on a fixed batch."""
    from cmift.models.backbones import load_model

    torch.manual_seed(0)
    cfg = compose("model=tiny", f"objective={objective_name}", "objective.cmi.space=output",
                  f"objective.cmi.lam={lam}")
    model = load_model(cfg.model, 2, False, vocab_size=100)
    model.eval()  # no dropout: the same function before and after the step
    gen = torch.Generator().manual_seed(1)
    batch = {"input_ids": torch.randint(5, 100, (32, 12), generator=gen),
             "labels": torch.randint(0, 2, (32,), generator=gen)}

    def outputs():
        return Outputs(logits=model(input_ids=batch["input_ids"]).logits)

    def passes(limit, train_mode=False):
        return [(outputs(), batch["labels"])]

    obj = build(cfg, TASKS["mrpc"])
    obj.setup(passes)
    probe = build(compose("objective=min_cmi", "objective.cmi.space=output"), TASKS["mrpc"])
    probe.setup(passes)  # the centroids every step is measured against
    q = probe.centroids.q.clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    obj(outputs(), batch)["loss"].backward()
    opt.step()
    with torch.no_grad():
        return batch_cmi(torch.log_softmax(outputs().logits, -1), batch["labels"], q).item()


def test_one_step_of_min_cmi_lowers_and_max_cmi_raises_batch_cmi():
    after_ce = _one_step_cmi("ce", 0.0)
    assert _one_step_cmi("min_cmi", 5.0) < after_ce < _one_step_cmi("max_cmi", 5.0)


def test_init_samples_is_a_seeded_sample_and_the_pass_reads_exactly_it():
    """objective.cmi.init_samples: a sample drawn from its own generator with the run's seed
    (never the run's random streams), in order; every example when it covers them all. The
    pass over a sample is the pass over a split holding only those examples."""
    from cmift.data.tokenized import PadCollator, Split
    from cmift.models.backbones import load_model
    from cmift.training.device import Device, Forward
    from cmift.training.evaluate import eval_passes, sample_examples

    state = torch.random.get_rng_state()
    a, b = sample_examples(100, 16, 7), sample_examples(100, 16, 8)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert len(a) == 16 and (np.diff(a) > 0).all() and not np.array_equal(a, b)
    assert np.array_equal(a, sample_examples(100, 16, 7))
    assert sample_examples(100, None, 7) is None and sample_examples(100, 100, 7) is None

    g = np.random.default_rng(0)
    ids = [g.integers(5, 100, size=g.integers(4, 12)) for _ in range(40)]
    split = Split(ids, None, g.integers(0, 2, size=40), np.arange(40))
    cfg = compose("model=tiny").model
    model = load_model(cfg, 2, False, 100).eval()
    forward = Forward(model, Device(torch.device("cpu"), None), features=False)
    chosen = sample_examples(40, 12, 3)
    got = {}
    for out, labels, indices in eval_passes(forward, split, PadCollator(split, 0, False), 5,
                                            chosen):
        for row, i in enumerate(indices):
            got[i] = (out.logits[row], int(labels[row]))
    assert sorted(got) == chosen.tolist()
    alone = Split([ids[i] for i in chosen], None, split.labels[chosen], chosen)
    for out, labels, indices in eval_passes(forward, alone, PadCollator(alone, 0, False), 5):
        for row, i in enumerate(indices):
            assert torch.allclose(out.logits[row], got[int(chosen[i])][0], atol=1e-5)
            assert int(labels[row]) == got[int(chosen[i])][1]


@pytest.mark.parametrize("study", ["min_cmi_vs_ce", "max_cmi_kd_vs_kd", "ncmi_vs_ce",
                                   "paper_min_cmi", "paper_max_cmi_kd"])
def test_the_studies_keep_the_papers_full_centroid_init(study):
    """A run's default init pass reads a 128-example sample; the paper studies read the whole
    training set, as the papers do (and as their committed records did)."""
    assert compose("objective=min_cmi").objective.cmi.init_samples == 128
    assert compose(f"experiment={study}").objective.cmi.init_samples is None
