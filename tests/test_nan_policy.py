"""Non-finite losses: every case driven by the fault hook (CMIFT_FAULTS), which makes the loss of
a known optimiser step NaN; never by a timer."""

import json
import math
import os
import sys

import pytest
import torch
from forked import run as run_cli

from cmift.data.tasks import TASKS
from cmift.objectives import Outputs, build
from cmift.objectives.centroids import Centroids
from cmift.training.loop import NonFiniteLoss
from cmift.training.run import run
from conftest import compose

BASE = ["model=tiny", "train.max_steps=10", "train.log_every=2", "data.max_train_samples=128",
        "data.max_eval_samples=32", "train.batch_size=16", "train.lr=1e-3"]


@pytest.fixture()
def faults(monkeypatch):
    def set_faults(spec: str):
        monkeypatch.setenv("CMIFT_FAULTS", spec)
    return set_faults


def _run(glue_dir, tmp_path, name, *overrides):
    (tmp_path / name).mkdir()
    return run(compose(*BASE, f"data.glue_dir={glue_dir}", *overrides), tmp_path / name)


def test_fail_policy_stops_at_the_step_and_records_it(glue_dir, tmp_path, faults):
    faults("nan_loss@3")
    with pytest.raises(NonFiniteLoss, match="non-finite loss by step 4"):
        _run(glue_dir, tmp_path, "fail")
    assert json.loads((tmp_path / "fail" / "metrics.json").read_text())["status"] == "failed"


def test_skipped_batch_leaves_no_trace_in_ema_centroids(glue_dir, tmp_path, faults):
    """The hang of issue 13: a skipped step's r used to stay queued and enter the next EMA, a
    NaN centroid row made every later loss NaN, and the run skipped forever."""
    faults("nan_outputs@3")  # NaN logits: the batch's r is NaN too
    record = _run(glue_dir, tmp_path, "skip", "objective=min_cmi", "objective.cmi.space=output",
                  "train.nan_policy=skip")
    assert record["status"] == "ok" and record["skipped_steps"] == 1 and record["steps"] == 10
    steps = [json.loads(x) for x in (tmp_path / "skip" / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 11))
    assert all(math.isfinite(s[k]) for s in steps for k in ("loss", "cmi", "gamma"))


def test_skip_with_zero_weights_is_ce_with_the_same_skip(glue_dir, tmp_path, faults):
    faults("nan_loss@3")
    ce = _run(glue_dir, tmp_path, "ce", "train.nan_policy=skip")
    zero = _run(glue_dir, tmp_path, "zero", "objective=min_cmi", "objective.cmi.lam=0",
                "train.nan_policy=skip")
    assert json.dumps(ce["evals"]) == json.dumps(zero["evals"])


def test_every_micro_batch_is_checked(glue_dir, tmp_path, faults):
    faults("nan_loss@3.0")  # the first of step 3's two micro-batches
    record = _run(glue_dir, tmp_path, "accum", "train.grad_accum=2", "train.batch_size=8",
                  "train.nan_policy=skip")
    assert record["skipped_steps"] == 1 and record["status"] == "ok"
    with pytest.raises(NonFiniteLoss, match="by step 4"):
        _run(glue_dir, tmp_path, "accum_fail", "train.grad_accum=2", "train.batch_size=8")


def test_consecutive_skips_stop_the_run_keeping_the_last_checkpoint(glue_dir, tmp_path,
                                                                    faults):
    faults("nan_loss@5,nan_loss@6,nan_loss@7")  # three tries at step 5: a model gone NaN
    with pytest.raises(NonFiniteLoss, match="3 consecutive steps"):
        _run(glue_dir, tmp_path, "stuck", "train.nan_policy=skip",
             "train.max_consecutive_skips=3", "train.save_every=2")
    record = json.loads((tmp_path / "stuck" / "metrics.json").read_text())
    assert record["status"] == "failed"
    kept = sorted(p.name for p in (tmp_path / "stuck" / "checkpoints").glob("*.pt"))
    assert kept[-1] == "step-00000004.pt"  # the last good one


def test_a_discarded_step_never_reaches_the_ema():
    cfg = compose("objective=min_cmi", "objective.cmi.space=output")
    objective = build(cfg, TASKS["mrpc"])
    objective.centroids = Centroids(2, 2, 0.9)
    start = objective.centroids.q.clone()
    skipped = Outputs(torch.tensor([[5.0, -5.0], [-5.0, 5.0]]))
    kept = Outputs(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    labels = {"labels": torch.tensor([0, 1])}
    objective(skipped, labels)
    objective.discard_step()
    objective(kept, labels)
    objective.after_step()
    reference = Centroids(2, 2, 0.9)
    reference.q = start
    reference.ema(torch.softmax(kept.logits, -1), labels["labels"])
    assert torch.allclose(objective.centroids.q, reference.q)


def test_ema_ignores_non_finite_rows():
    c = Centroids(2, 3, momentum=0.5)
    before = c.q.clone()
    r = torch.tensor([[0.2, 0.3, 0.5], [float("nan"), 0.5, 0.5], [0.6, 0.2, 0.2]])
    c.ema(r, torch.tensor([0, 0, 1]))
    assert torch.isfinite(c.q).all()
    want0 = 0.5 * before[0] + 0.5 * r[0]  # the NaN row of class 0 is left out
    assert torch.allclose(c.q[0], want0 / want0.sum())


def test_a_zero_weight_term_is_not_in_the_loss():
    cfg = compose("objective=min_cmi", "objective.cmi.lam=0", "objective.cmi.space=output")
    objective = build(cfg, TASKS["mrpc"])
    objective.centroids = Centroids(2, 2, 0.99)
    objective.centroids.q = torch.tensor([[float("nan"), float("nan")], [0.5, 0.5]])
    terms = objective(Outputs(torch.tensor([[1.0, -1.0], [0.0, 2.0]])),
                      {"labels": torch.tensor([0, 1])})
    assert math.isnan(terms["cmi"].item()) and math.isfinite(terms["loss"].item())
    assert terms["loss"].item() == terms["ce"].item()


def test_nan_stop_is_one_line_on_the_command_line(glue_dir, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CMIFT_FAULTS": "nan_loss@2"}
    proc = run_cli([sys.executable, "-m", "cmift", *BASE, f"data.glue_dir={glue_dir}",
                           f"output_dir={tmp_path}"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("cmift: error: run ") and "non-finite loss by step 2" in last


def test_a_model_gone_nan_stops_instead_of_skipping_forever(glue_dir, tmp_path):
    """lr 1e9 makes the weights non-finite after a step or two; every later loss is NaN. The
    run used to skip forever; now it stops after train.max_consecutive_skips."""
    with pytest.raises(NonFiniteLoss, match="5 consecutive steps"):
        _run(glue_dir, tmp_path, "gone", "train.lr=1e9", "train.max_grad_norm=0",
             "train.nan_policy=skip", "train.max_steps=200")
    record = json.loads((tmp_path / "gone" / "metrics.json").read_text())
    assert record["status"] == "failed"
