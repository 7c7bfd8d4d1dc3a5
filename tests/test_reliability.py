"""Reliability: exact resume after SIGKILL, Ctrl-C, NaN policy, atomic files, clear errors."""

import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from cmift.runs.files import write_json
from cmift.runs.rundir import is_locked
from cmift.training import checkpoint as ckpt
from conftest import dev_evals

TINY = ["task=mrpc", "model=tiny", "data.max_train_samples=256", "data.max_eval_samples=64",
        "train.batch_size=16", "train.max_steps=40", "train.eval_every=10", "train.lr=1e-3"]


def _start(args, cwd, faults=""):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CMIFT_FAULTS": faults}
    return subprocess.Popen([sys.executable, "-m", "cmift", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _metrics(root):
    (path,) = [p for p in root.rglob("metrics.json")]
    return json.loads(path.read_text()), path.parent


def _interrupt_then_resume(glue_dir, tmp_path, args, fault, code):
    """A clean run; the same run stopped by `fault` at a known step (exit `code`); the same
    command again. Returns (clean record, resumed record, resumed run dir)."""
    args = [*args, f"data.glue_dir={glue_dir}"]
    clean = _start([*args, f"output_dir={tmp_path}/clean"], tmp_path)
    assert clean.wait(300) == 0, clean.stderr.read()[-2000:]
    stopped = _start([*args, f"output_dir={tmp_path}/stopped"], tmp_path, faults=fault)
    _, err = stopped.communicate(timeout=300)
    assert stopped.returncode == code, err[-2000:]
    partial, run_dir = _metrics(tmp_path / "stopped")
    assert partial["status"] in ("running", "interrupted", "failed")  # not finished, not torn
    again = _start([*args, f"output_dir={tmp_path}/stopped"], tmp_path)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err[-2000:]
    resumed, run_dir = _metrics(tmp_path / "stopped")
    assert "resumed from" in (run_dir / "run.log").read_text()
    return _metrics(tmp_path / "clean")[0], resumed, run_dir


@pytest.mark.parametrize("objective", ["ce", "min_cmi"])
def test_sigkill_then_rerun_matches_an_uninterrupted_run(glue_dir, tmp_path, objective):
    reference, resumed, run_dir = _interrupt_then_resume(
        glue_dir, tmp_path, [*TINY, f"objective={objective}", "train.save_every=5"],
        "sigkill@7", -signal.SIGKILL)  # killed two steps after the checkpoint of step 5
    assert resumed["status"] == "ok"
    assert dev_evals(resumed) == dev_evals(reference)
    assert json.dumps(resumed["final"]) == json.dumps(reference["final"])
    steps = [json.loads(x)["step"] for x in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))  # every step logged once
    assert (run_dir / "model" / "model.safetensors").is_file()
    assert not list((run_dir / "checkpoints").glob("*.pt"))  # cleared once finished


@pytest.mark.parametrize("fault, code, word", [("sigint@23", 2, "interrupted"),
                                               ("sigterm@23", 143, "terminated")])
def test_ctrl_c_and_sigterm_checkpoint_and_the_rerun_matches(glue_dir, tmp_path, fault, code,
                                                             word):
    """Ctrl-C and SIGTERM (SLURM preemption, `timeout`) save the last step boundary, mark the
    run interrupted, release its lock, and the same command resumes to the same result."""
    args = [*TINY, "objective=min_cmi", f"data.glue_dir={glue_dir}",
            f"output_dir={tmp_path}/out"]
    proc = _start(args, tmp_path, faults=fault)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines()[-1].startswith(f"cmift: error: {word}; a checkpoint")
    record, run_dir = _metrics(tmp_path / "out")
    assert record["status"] == "interrupted" and not is_locked(run_dir)  # released
    kept = sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt"))
    assert kept[-1] == "step-00000023.pt"  # the step boundary where the signal came
    again = _start(args, tmp_path)
    assert again.wait(300) == 0, again.stderr.read()[-2000:]
    clean = _start([*args[:-1], f"output_dir={tmp_path}/clean"], tmp_path)
    assert clean.wait(300) == 0, clean.stderr.read()[-2000:]
    resumed, reference = _metrics(tmp_path / "out")[0], _metrics(tmp_path / "clean")[0]
    assert dev_evals(resumed) == dev_evals(reference) and resumed["status"] == "ok"


def test_checkpoints_load_with_weights_only_and_keep_the_last_k(tmp_path):
    for step in range(1, 5):
        ckpt.save(tmp_path, step, {"step": step, "rng": ckpt.rng_state(),
                                   "w": torch.ones(2) * step}, keep=2)
    names = sorted(p.name for p in (tmp_path / "checkpoints").glob("*.pt"))
    assert names == ["step-00000003.pt", "step-00000004.pt"]
    latest = ckpt.latest(tmp_path)
    assert latest["step"] == 4 and torch.equal(latest["w"], torch.full((2,), 4.0))
    (tmp_path / "checkpoints" / "step-00000005.pt").write_bytes(b"torn")  # unreadable newest
    assert ckpt.latest(tmp_path)["step"] == 4


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = ckpt.rng_state()
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_atomic_json_write_leaves_the_old_file_on_failure(tmp_path):
    path = tmp_path / "metrics.json"
    write_json(path, {"status": "ok"})
    circular = {"status": "ok"}
    circular["self"] = circular
    with pytest.raises(ValueError):
        write_json(path, circular)  # the write fails midway
    assert json.loads(path.read_text()) == {"status": "ok"}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_a_full_disk_is_one_line_keeps_the_last_checkpoint_and_the_rerun_resumes(glue_dir,
                                                                                 tmp_path):
    """The 3rd checkpoint write fails with ENOSPC halfway (fault hook): one line naming the
    file and the space, exit 2, the earlier checkpoints intact; after 'freeing space' (no
    fault) the same command resumes and ends where an uninterrupted run ends."""
    reference, resumed, run_dir = _interrupt_then_resume(
        glue_dir, tmp_path, [*TINY, "objective=min_cmi", "train.save_every=5"],
        "enospc@step-*.pt#3", 2)
    assert resumed["status"] == "ok" and dev_evals(resumed) == dev_evals(reference)
    assert "resumed from" in (run_dir / "run.log").read_text()


def test_the_full_disk_message(glue_dir, tmp_path):
    args = [*TINY, "train.save_every=5", f"data.glue_dir={glue_dir}", f"output_dir={tmp_path}"]
    proc = _start(args, tmp_path, faults="enospc@step-*.pt#2")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "Traceback" not in err, err[-2000:]
    (line,) = [x for x in err.strip().splitlines() if x.startswith("cmift: error:")]
    assert "no space left" in line and "step-00000010.pt" in line and "MB free" in line
    record, run_dir = _metrics(tmp_path)
    names = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert names == ["step-00000005.pt"]  # no partial file left behind
    assert record["status"] == "failed" and "no space left" in record["error"]


class _Planted:
    """A pickle payload: unpickling it would create a file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_planted_pickle_payloads_are_refused(tmp_path):
    import numpy as np

    from cmift.training.teacher import read_logits

    marker = tmp_path / "pwned"
    ckpt.save(tmp_path, 1, {"step": 1, "w": torch.ones(1)}, keep=3)
    torch.save({"step": 2, "evil": _Planted(marker)}, tmp_path / "checkpoints" / "step-00000002.pt")
    assert ckpt.latest(tmp_path)["step"] == 1  # the planted newest one is skipped, not run
    np.save(tmp_path / "train_logits.npy", np.array([_Planted(marker)], dtype=object),
            allow_pickle=True)
    with pytest.raises(ValueError, match="not a plain array"):
        read_logits(tmp_path / "train_logits.npy")
    assert not marker.exists()


def test_written_files_get_the_users_mode(tmp_path):
    """mkstemp's temp files are 0600; a finished file has the mode the umask gives (0644 under
    022), so others on a shared server can read run records."""
    mask = os.umask(0)
    os.umask(mask)
    write_json(tmp_path / "metrics.json", {"a": 1})
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o666 & ~mask


def test_run_dir_lock_is_an_os_lock_that_dies_with_its_process(tmp_path):
    """filelock: a live holder keeps the directory; a SIGKILLed one frees it at once."""
    from cmift.runs.rundir import claim_run_dir, release_run_dir

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from cmift.runs.rundir import claim_run_dir; "
         f"claim_run_dir(Path({str(tmp_path / 'run')!r})); print('held', flush=True); "
         "sys.stdin.read()"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    assert is_locked(tmp_path / "run")
    assert claim_run_dir(tmp_path / "run", exclusive=True) is None
    assert claim_run_dir(tmp_path / "run") == tmp_path / "run_2"  # the same config twice
    release_run_dir(tmp_path / "run_2")
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert not is_locked(tmp_path / "run")
    assert claim_run_dir(tmp_path / "run", exclusive=True) == tmp_path / "run"
    release_run_dir(tmp_path / "run")
