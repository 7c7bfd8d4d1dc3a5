"""A whole run of the tiny model on MRPC (the real files when present, else generated)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from forked import run as run_cli

from cmift.runs.rundir import claim_run_dir, release_run_dir
from cmift.training.device import cpu_has_bf16
from cmift.training.run import run
from conftest import REPO, compose, dev_evals


def _cmift(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return run_cli([sys.executable, "-m", "cmift", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_run_writes_metrics_manifest_predictions(glue_dir, tmp_path):
    args = ["task=mrpc", "objective=ce", "model=tiny", "train.max_steps=20",
            f"data.glue_dir={glue_dir}", f"output_dir={tmp_path}/outputs"]
    proc = _cmift(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (run_dir,) = list((tmp_path / "outputs" / "mrpc" / "ce" / "tiny").iterdir())
    assert run_dir.name.startswith("seed=42,train.max_steps=20-")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["status"] == "ok" and metrics["schema_version"] == 1
    assert (metrics["task"], metrics["model"], metrics["objective"], metrics["seed"]) == \
        ("mrpc", "tiny", "ce", 42)
    assert "train.max_steps=20" in metrics["overrides"]
    for key in ("accuracy", "f1", "cmi", "gamma", "loss", "score"):
        assert 0 <= metrics["final"][key] < 10, key
    ncmi = metrics["final"]["ncmi"]  # cmi / gamma: undefined (NaN) when gamma is 0
    assert ncmi != ncmi or ncmi >= 0
    assert metrics["best"]["score"] >= metrics["final"]["score"]
    n_train = len((Path(glue_dir) / "MRPC" / "train.tsv").read_text().splitlines()) - 1
    per_epoch, short = -(-n_train // 32), n_train % 32 or 32
    full, rest = divmod(20, per_epoch)  # 20 steps: `full` epochs, then `rest` batches
    # each epoch has one short batch, somewhere in the length-grouped, shuffled order
    assert metrics["steps"] == 20
    assert metrics["train_examples"] - full * n_train in (rest * 32, (rest - 1) * 32 + short)
    assert metrics["train_examples_per_second"] > 0 and metrics["train_seconds"] > 0
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["packages"]["torch"] and manifest["device"].startswith("cpu")
    assert manifest["git"]["commit"] is None or len(manifest["git"]["commit"]) == 40
    assert (run_dir / "config.yaml").read_text().count("name: tiny") == 1
    assert "eval step 20" in (run_dir / "run.log").read_text()
    preds = (run_dir / "predictions_validation.tsv").read_text().splitlines()
    assert preds[0].split("\t")[:3] == ["index", "label", "prediction"]
    saved = json.loads((run_dir / "model" / "config.json").read_text())
    assert saved["id2label"] == {"0": "not_equivalent", "1": "equivalent"}  # not LABEL_1
    assert saved["label2id"] == {"not_equivalent": 0, "equivalent": 1}
    steps = [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 21)) and "ce" in steps[0]
    seconds = [s["seconds"] for s in steps]  # training time at each step: a timeline
    assert seconds == sorted(seconds) and 0 < seconds[-1] <= metrics["train_seconds"]

    again = _cmift(*args, cwd=tmp_path)  # a finished run is not trained twice
    assert again.returncode == 0 and "skipped" in again.stdout


def test_same_seed_gives_identical_runs(glue_dir, tmp_path):
    results = []
    for name in ("a", "b"):
        cfg = compose("model=tiny", "train.max_steps=8", "train.eval_every=4",
                      f"data.glue_dir={glue_dir}", "data.max_eval_samples=64")
        (tmp_path / name).mkdir()
        results.append(run(cfg, tmp_path / name))
    assert dev_evals(results[0]) == dev_evals(results[1])
    assert len(results[0]["evals"]) == 2


def test_bad_value_exits_2_with_one_line(tmp_path):
    proc = _cmift("train.batch_size=0", f"output_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "cmift: error: train.batch_size=0 is not allowed: an integer > 0"]


def test_concurrent_runs_never_share_a_directory(tmp_path):
    base = tmp_path / "run"
    first = claim_run_dir(base)
    # the same config started again while the first is alive gets its own directory
    code = ("import sys; from pathlib import Path; from cmift.runs.rundir import claim_run_dir;"
            f"print(claim_run_dir(Path({str(base)!r})))")
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert first == base and Path(other.stdout.strip()) == tmp_path / "run_2"
    release_run_dir(first)
    assert claim_run_dir(base) == base


def test_stsb_regression_run(tmp_path):
    from conftest import REAL_GLUE

    if not (REAL_GLUE / "STS-B" / "train.tsv").is_file():
        pytest.skip("real STS-B not present")
    cfg = compose("task=stsb", "model=tiny", "train.max_steps=10", f"data.glue_dir={REAL_GLUE}",
                  "data.max_train_samples=400", "data.max_eval_samples=200")
    out = run(cfg, tmp_path)
    assert out["status"] == "ok"
    assert {"pearson", "spearmanr", "loss", "score"} <= set(out["final"])
    assert "cmi" not in out["final"]  # no classes, no CMI diagnostics


def test_grad_accum_counts_optimiser_steps(glue_dir, tmp_path):
    cfg = compose("model=tiny", "train.max_steps=3", "train.batch_size=4", "train.grad_accum=3",
                  f"data.glue_dir={glue_dir}", "data.max_eval_samples=16")
    out = run(cfg, tmp_path)
    assert out["steps"] == 3 and out["train_examples"] == 36


@pytest.mark.skipif(not cpu_has_bf16(),
                    reason="this CPU has no bf16 kernels")
def test_bf16_autocast_on_cpu_trains_with_fp32_weights_and_losses(glue_dir, tmp_path):
    """train.precision=bf16 on the CPU (about 2x faster where the CPU has avx512_bf16 or AMX):
    the matrix products run in bf16, the weights, the optimizer and the losses stay fp32, and
    the run is its own identity, never pooled with fp32 runs."""
    common = ("model=tiny", "objective=min_cmi", "train.max_steps=6", "train.batch_size=8",
              f"data.glue_dir={glue_dir}", "data.max_eval_samples=16")
    cfg = compose(*common, "train.precision=bf16")
    for d in ("bf16", "fp32"):
        (tmp_path / d).mkdir()
    out = run(cfg, tmp_path / "bf16")
    reference = run(compose(*common), tmp_path / "fp32")
    assert out["status"] == "ok"
    devices = [json.loads((tmp_path / d / "manifest.json").read_text())["device"]
               for d in ("bf16", "fp32")]
    assert devices == ["cpu (bfloat16)", "cpu (fp32)"]
    steps = [json.loads(line) for line in
             (tmp_path / "bf16" / "steps.jsonl").read_text().splitlines()]
    assert all(isinstance(s["ce"], float) and s["ce"] == s["ce"] for s in steps)
    # bf16 products round differently: close to the fp32 run, not equal to it
    losses = out["final"]["loss"], reference["final"]["loss"]
    assert losses[0] != losses[1] and abs(losses[0] - losses[1]) < 0.05
    from safetensors.torch import load_file

    weights = load_file(tmp_path / "bf16" / "model" / "model.safetensors")
    assert {w.dtype for w in weights.values()} == {torch.float32}
    from cmift.config.identity import config_hash
    assert config_hash(cfg) != config_hash(compose(*common))


@pytest.mark.parametrize("fused", [True, False])
def test_fused_adamw_is_a_knob(fused):
    from cmift.training.device import Device
    from cmift.training.optim import make_optimizer

    model = torch.nn.Linear(3, 2)
    t = compose(f"train.fused_adamw={fused}").train
    optimizer = make_optimizer(model, t, Device(torch.device("cpu"), None))
    assert bool(optimizer.defaults["fused"]) is fused
    [decay, no_decay] = optimizer.param_groups  # biases are not decayed
    assert decay["weight_decay"] == t.weight_decay and no_decay["weight_decay"] == 0.0


def test_manifest_names_the_code_the_process_loaded(monkeypatch):
    """git is asked once per process: a sweep's later jobs still run the code loaded at its
    start, whatever was committed meanwhile."""
    from cmift.runs import manifest as manifest_mod

    manifest_mod.git_commit.cache_clear()
    calls = []
    real = manifest_mod.subprocess.run
    monkeypatch.setattr(manifest_mod.subprocess, "run",
                        lambda *a, **k: calls.append(a) or real(*a, **k))
    first = manifest_mod.manifest("cpu", 1)["git"]
    second = manifest_mod.manifest("cpu", 1)["git"]
    git_calls = [c for c in calls if c[0][0] == "git"]
    assert first == second and 1 <= len(git_calls) <= 2  # rev-parse (+ status), once


def test_manifest_versions_are_the_loaded_modules(monkeypatch):
    """A package upgraded on disk under a running sweep: the record names the code in memory."""
    import types

    from cmift.runs import manifest as manifest_mod

    monkeypatch.setitem(manifest_mod.sys.modules, "transformers",
                        types.SimpleNamespace(__version__="5.99.0"))
    monkeypatch.setitem(manifest_mod.sys.modules, "hydra",
                        types.SimpleNamespace(__version__="1.99.0"))
    manifest_mod.package_versions.cache_clear()
    try:
        versions = manifest_mod.manifest("cpu", 1)["packages"]
    finally:
        manifest_mod.package_versions.cache_clear()
    assert versions["transformers"] == "5.99.0" and versions["hydra-core"] == "1.99.0"
    assert versions["omegaconf"]  # not imported under another name: still found


def test_a_cpu_run_at_auto_precision_hints_at_bf16_only_where_the_cpu_has_it(monkeypatch):
    from cmift.training import device as dev

    cpu = dev.Device(torch.device("cpu"), None)
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True)
    assert "train.precision=bf16" in dev.bf16_hint(compose().train.precision, cpu)
    assert dev.bf16_hint("fp32", cpu) is None  # chosen explicitly
    assert dev.bf16_hint("bf16", dev.Device(torch.device("cpu"), torch.bfloat16)) is None
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    assert dev.bf16_hint("auto", cpu) is None
