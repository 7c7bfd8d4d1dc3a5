"""Multi-task mixtures (mixture=uniform|size|temperature|taskpgm): the mixing rules, TaskPGM's
energy and closed form against an independent constrained optimiser, the affinities against
NumPy / SciPy, the batch sampler, and tiny multi-task runs end to end (resume, reuse, tables)."""

import json
import signal

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.spatial.distance import jensenshannon
from test_interruptions import cmift

from cmift.mixtures import taskpgm
from cmift.mixtures.rules import proportions
from conftest import compose

rng = np.random.default_rng(0)


def random_pd(n: int, seed: int) -> np.ndarray:
    a = np.random.default_rng(seed).normal(size=(n, n))
    return a @ a.T / n + 0.5 * np.eye(n)


def slsqp(S, u, beta, lam, bounds):
    """An independent solution: scipy's generic constrained optimiser on the same energy."""
    n = len(S)
    res = minimize(lambda p: 0.5 * lam * p @ S @ p - beta * u @ p, np.full(n, 1.0 / n),
                   jac=lambda p: lam * S @ p - beta * u, method="SLSQP",
                   constraints=[{"type": "eq", "fun": lambda p: p.sum() - 1.0}],
                   bounds=[(0, None)] * n if bounds else None,
                   options={"ftol": 1e-14, "maxiter": 500})
    assert res.success, res.message
    return res.x


@pytest.mark.parametrize("seed", range(5))
def test_closed_form_is_the_constrained_minimiser_of_the_energy(seed):
    S = random_pd(5, seed)
    u = np.random.default_rng(100 + seed).normal(size=5)
    beta, lam = 0.7, 1.3
    p = taskpgm.closed_form(S, u, beta, lam)
    assert p.sum() == pytest.approx(1.0, abs=1e-12)
    np.testing.assert_allclose(p, slsqp(S, u, beta, lam, bounds=False), atol=1e-6)


def test_solve_matches_the_optimiser_with_p_nonnegative_when_the_minimiser_is_interior():
    for seed in range(20):
        S = random_pd(4, seed) + 2.0  # affinities: positive, tasks alike
        shifted = taskpgm.positive_definite(S, 1e-5)
        sol = taskpgm.solve(S, beta=1.0, lam=1.0)
        if sol.projected:
            continue
        u = shifted @ np.ones(4)
        np.testing.assert_allclose(sol.p, slsqp(shifted, u, 1.0, 1.0, bounds=True), atol=1e-6)
        return
    pytest.fail("no interior case among the random draws")


@pytest.mark.parametrize("seed", range(10))
def test_solve_lies_on_the_simplex_even_for_indefinite_affinities(seed):
    g = np.random.default_rng(seed)
    S = g.normal(size=(6, 6))  # PMI-like: negative entries, indefinite
    sol = taskpgm.solve(S + S.T, beta=g.uniform(0, 3), lam=g.uniform(0.1, 3))
    assert (sol.p >= 0).all() and sol.p.sum() == pytest.approx(1.0)


def test_projection_is_the_nearest_point_of_the_simplex():
    for seed in range(5):
        y = np.random.default_rng(seed).normal(size=6) * 2
        p = taskpgm.project_to_simplex(y)
        ref = minimize(lambda q, y=y: ((q - y) ** 2).sum(), np.full(6, 1 / 6), method="SLSQP",
                       constraints=[{"type": "eq", "fun": lambda q: q.sum() - 1}],
                       bounds=[(0, None)] * 6, options={"ftol": 1e-14}).x
        np.testing.assert_allclose(p, ref, atol=1e-6)


def test_beta_over_lam_trades_representativeness_for_diversity():
    """Only beta / lam matters (u = S 1); at 1/n the mixture is uniform, and at 0 it is the
    most diverse mixture (the minimiser of p'Sp)."""
    S = random_pd(4, 3) + 1.0
    np.testing.assert_allclose(taskpgm.solve(S, 0.25, 1.0).p, np.full(4, 0.25), atol=1e-9)
    np.testing.assert_allclose(taskpgm.solve(S, 0.5, 2.0).p, taskpgm.solve(S, 0.25, 1.0).p)
    diverse = taskpgm.solve(S, 0.0, 1.0)
    if not diverse.projected:
        shifted = taskpgm.positive_definite(S, 1e-5)
        np.testing.assert_allclose(diverse.p, slsqp(shifted, np.zeros(4), 0.0, 1.0, False),
                                   atol=1e-6)


def test_the_mixing_rules():
    sizes = [100, 400, 2500]
    np.testing.assert_allclose(proportions("uniform", sizes), [1 / 3] * 3)
    np.testing.assert_allclose(proportions("size", sizes), np.array(sizes) / 3000)
    t2 = np.sqrt(sizes)
    np.testing.assert_allclose(proportions("temperature", sizes, compose(
        "mixture=temperature").mixture.temperature), t2 / t2.sum())
    one = compose("mixture=temperature", "mixture.temperature.t=1").mixture.temperature
    np.testing.assert_allclose(proportions("temperature", sizes, one),
                               proportions("size", sizes))


def test_affinities_against_scipy_and_explicit_sums():
    R = rng.dirichlet(np.ones(7), size=(3, 11))  # 3 models, 11 probes, 7 coordinates
    S, D = taskpgm.jsd_similarity(R)
    for i in range(3):
        for j in range(3):
            ref = np.mean([jensenshannon(R[i, x], R[j, x]) ** 2 for x in range(11)])
            assert D[i, j] == pytest.approx(ref, abs=1e-10)
    np.testing.assert_allclose(S, 1 - D / np.log(2))
    P = taskpgm.pmi_similarity(R)
    for i in range(3):
        for j in range(3):
            agree = np.mean([sum(R[i, x, k] * R[j, x, k] for k in range(7)) for x in range(11)])
            chance = sum(R[i, :, k].mean() * R[j, :, k].mean() for k in range(7))
            assert P[i, j] == pytest.approx(np.log(agree / chance), abs=1e-10)


def test_batches_follow_p_each_from_one_task_and_are_seeded():
    import torch

    from cmift.data.tokenized import Split
    from cmift.training.multitask import MixtureTrain, TaskData, mixture_batches

    def part(n):
        ids = [np.arange(3 + i % 5) for i in range(n)]
        return TaskData("t", None, Split(ids, None, np.zeros(n), np.arange(n)), {}, None)

    parts = [part(50), part(120), part(30)]
    train = MixtureTrain(parts)
    p = np.array([0.2, 0.5, 0.3])

    def draw(seed):
        return mixture_batches(parts, train, p, 3000, 8, torch.Generator().manual_seed(seed),
                               True)

    batches = draw(1)
    assert batches == draw(1) and batches != draw(2)
    tasks = [train.task_of(b[0]) for b in batches]
    assert all({train.task_of(i) for i in b} == {k} for b, k in zip(batches, tasks))
    freq = np.bincount(tasks, minlength=3) / len(tasks)
    np.testing.assert_allclose(freq, p, atol=0.03)


@pytest.mark.parametrize("overrides, fragment", [
    (["mixture=uniform", "mixture.tasks=[mrpc]"], "two or more different tasks"),
    (["mixture=uniform", "mixture.tasks=[mrpc,nope]"], "'nope' is not allowed"),
    (["mixture.tasks=[mrpc,rte]"], "not allowed with mixture=none"),
    (["mixture=size", "mixture.tasks=[mrpc,rte]", "objective=kd", "distillation=kd"],
     "does not distil"),
    (["mixture=size", "mixture.tasks=[mrpc,stsb]", "objective=min_cmi"], "regression"),
    (["mixture=size", "mixture.tasks=[mrpc,rte]", "tuning=prefix"], "tuning='prefix'"),
])
def test_bad_mixtures_are_refused_in_one_line(overrides, fragment):
    from cmift.config.spec import ConfigError
    from cmift.config.validate import validate

    with pytest.raises(ConfigError, match=fragment):
        validate(compose(*overrides))


def test_single_task_runs_keep_their_identity():
    from cmift.config.identity import identity, run_name

    cfg = compose("model=tiny")
    assert "mixture" not in identity(cfg)
    mixed = compose("model=tiny", "mixture=size", "mixture.tasks=[mrpc,rte]")
    assert set(identity(mixed)["data"]["fingerprint"]) == {"mrpc", "rte"}
    assert run_name(mixed, ["mixture=size"]).startswith("mrpc+rte/ce/tiny/seed=42,mixture=size-")


TINY = ["model=tiny", "mixture.tasks=[mrpc,rte]", "data.max_train_samples=96",
        "data.max_eval_samples=40", "train.batch_size=16", "train.max_steps=12",
        "train.eval_every=6", "train.lr=1e-3", "train.save_every=3", "threads=1"]


def _record(root):
    (path,) = [p for p in root.rglob("metrics.json") if "+" in str(p)]
    return json.loads(path.read_text()), path.parent


def test_a_mixture_run_end_to_end_resumes_exactly(fake_glue, tmp_path):
    args = [*TINY, "mixture=size", "objective=min_cmi", f"data.glue_dir={fake_glue}"]
    clean = cmift([*args, f"output_dir={tmp_path}/clean"], tmp_path)
    assert clean.returncode == 0, clean.stderr[-2000:]
    record, run_dir = _record(tmp_path / "clean")
    assert record["status"] == "ok" and record["task"] == "mrpc+rte"
    final = record["final"]
    assert {"mrpc/f1", "mrpc/accuracy", "rte/accuracy", "score"} <= set(final)
    assert final["score"] == pytest.approx((final["mrpc/score"] + final["rte/score"]) / 2)
    mixture = json.loads((run_dir / "mixture.json").read_text())
    assert mixture["p"] == pytest.approx([0.5, 0.5])  # equal sizes
    assert (run_dir / "mixture.png").is_file() and (run_dir / "mixture.pdf").is_file()
    for task in ("mrpc", "rte"):
        assert (run_dir / f"predictions_{task}_validation.tsv").is_file()
        assert (run_dir / "model" / task / "config.json").is_file()

    killed = cmift([*args, f"output_dir={tmp_path}/out"], tmp_path, faults="sigkill@7")
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    again = cmift([*args, f"output_dir={tmp_path}/out"], tmp_path)
    assert again.returncode == 0, again.stderr[-2000:]
    resumed, _ = _record(tmp_path / "out")
    assert [e["dev"] for e in resumed["evals"]] == [e["dev"] for e in record["evals"]]


def test_taskpgm_reuses_single_task_runs_which_are_table_rows(fake_glue, tmp_path):
    import pandas as pd

    args = [*TINY, "mixture=taskpgm", "mixture.taskpgm.probe_per_task=16",
            f"data.glue_dir={fake_glue}", f"output_dir={tmp_path}/o"]
    first = cmift(args, tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stderr.count("training the single-task") == 2
    record, run_dir = _record(tmp_path / "o")
    info = record["mixture"]
    assert len(info["single_task_runs"]) == 2 and len(info["similarity"]) == 2
    assert sum(info["p"]) == pytest.approx(1.0)
    # a single-task record keeps the overrides that reproduce it (its command line, its hash)
    from cmift.config.identity import config_hash

    singles = [json.loads(p.read_text()) for p in (tmp_path / "o").rglob("metrics.json")
               if "+" not in p.parent.parent.parent.parent.name]
    assert len(singles) == 2
    for single in singles:
        assert "mixture=none" in single["overrides"], single["overrides"]
        assert config_hash(compose(*single["overrides"])) == single["config_hash"]
    # the study's compute counts each record once (the multi-task run is a table row per task)
    from cmift.report.results import _spent

    n, seconds, unfinished = _spent(tmp_path / "o")
    everything = [record, *singles]
    assert (n, unfinished) == (3, 0)
    assert seconds == pytest.approx(sum(r["train_seconds"] + r["eval_seconds"] for r in everything))
    second = cmift([*args, "mixture.taskpgm.divergence=pmi"], tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert "training the single-task" not in second.stderr
    assert second.stderr.count("single-task") >= 2  # reused
    table = cmift([str(tmp_path / "o"), "--no-plots"], tmp_path, module="cmift-table")
    assert table.returncode == 0, table.stderr[-2000:]
    runs = pd.read_csv(tmp_path / "o" / "tables" / "runs.csv")
    assert set(runs["mixture"]) == {"none", "taskpgm"}
    assert len(runs[runs["mixture"] == "taskpgm"]) == 4  # 2 runs x 2 tasks
    glue = (tmp_path / "o" / "tables" / "glue.md").read_text()
    assert "(taskpgm mixture)" in glue and "tiny ce " in glue
    mixtures = (tmp_path / "o" / "tables" / "mixtures.md").read_text()
    assert "tiny ce taskpgm (jsd)" in mixtures and "tiny ce taskpgm (pmi)" in mixtures
