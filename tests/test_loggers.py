"""logger=csv|tensorboard|wandb: each receives the config, every step's losses and every
evaluation; a resumed run's logs end like an uninterrupted run's."""

import json
import os
import signal
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from forked import run as run_cli

ARGS = ["task=mrpc", "model=tiny", "train.max_steps=12", "train.eval_every=4",
        "train.batch_size=16", "train.log_every=5", "train.save_every=2"]


def cmift(args, cwd, faults="", **env):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CMIFT_FAULTS": faults,
           **env}
    return run_cli([sys.executable, "-m", "cmift", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def run_dir(root: Path) -> tuple[Path, dict]:
    [path] = list(root.rglob("metrics.json"))
    return path.parent, json.loads(path.read_text())


def test_csv_logger_gets_steps_evals_config_and_resumes(fake_glue, tmp_path):
    args = [*ARGS, "logger=csv", f"data.glue_dir={fake_glue}"]
    assert cmift([*args, f"output_dir={tmp_path}/clean"], tmp_path).returncode == 0
    folder, record = run_dir(tmp_path / "clean")
    frame = pd.read_csv(folder / "logs" / "metrics.csv")
    steps = frame[frame["train/loss"].notna()]
    assert steps["step"].tolist() == list(range(1, 13))  # every step, not only the flushed
    logged = [json.loads(line) for line in (folder / "steps.jsonl").read_text().splitlines()]
    assert steps["train/loss"].tolist() == pytest.approx([r["loss"] for r in logged])
    evals = frame[frame["dev/accuracy"].notna()]
    assert evals["step"].tolist() == [e["step"] for e in record["evals"]] == [4, 8, 12]
    assert evals["dev/accuracy"].tolist() == [e["dev"]["accuracy"] for e in record["evals"]]
    hparams = yaml.safe_load((folder / "logs" / "hparams.yaml").read_text())
    assert hparams["train"]["max_steps"] == 12 and hparams["logger"]["name"] == "csv"
    # killed after step 6 (checkpoint at 6): the resumed run's file equals the clean one
    out = tmp_path / "killed"
    assert cmift([*args, f"output_dir={out}"], tmp_path, "sigkill@6").returncode \
        == -signal.SIGKILL
    assert cmift([*args, f"output_dir={out}"], tmp_path).returncode == 0
    again = pd.read_csv(run_dir(out)[0] / "logs" / "metrics.csv")
    timing = [c for c in frame.columns if c == "train/seconds"]
    pd.testing.assert_frame_equal(again.drop(columns=timing), frame.drop(columns=timing))


def test_tensorboard_logger_writes_scalars_and_the_config(fake_glue, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = cmift([*ARGS, "logger=tensorboard", f"data.glue_dir={fake_glue}",
                  f"output_dir={tmp_path}"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder, record = run_dir(tmp_path)
    events = EventAccumulator(str(folder / "tensorboard")).Reload()
    assert [e.step for e in events.Scalars("train/loss")] == list(range(1, 13))
    assert [e.step for e in events.Scalars("dev/accuracy")] == [4, 8, 12]
    assert events.Scalars("dev/accuracy")[-1].value == pytest.approx(
        record["evals"][-1]["dev"]["accuracy"])
    assert "train/lr" in events.Tags()["scalars"] and "config/text_summary" in \
        events.Tags()["tensors"]


def test_wandb_logger_works_offline(fake_glue, tmp_path):
    pytest.importorskip("wandb")
    proc = cmift([*ARGS, "logger=wandb", f"data.glue_dir={fake_glue}", f"output_dir={tmp_path}"],
                 tmp_path, WANDB_MODE="offline", WANDB_SILENT="true")
    assert proc.returncode == 0, proc.stderr[-2000:]
    folder, _ = run_dir(tmp_path)
    [stream] = list((folder / "wandb").glob("offline-run-*/run-*.wandb"))
    data = stream.read_bytes()  # the offline record stream: keys are stored as plain strings
    for key in (b"train/loss", b"train/lr", b"dev/accuracy", b"final/accuracy", b"max_steps"):
        assert key in data, key


def test_logger_none_writes_nothing_extra(fake_glue, tmp_path):
    assert cmift([*ARGS, f"data.glue_dir={fake_glue}", f"output_dir={tmp_path}"],
                 tmp_path).returncode == 0
    folder, _ = run_dir(tmp_path)
    assert not any((folder / d).exists() for d in ("logs", "tensorboard", "wandb"))
