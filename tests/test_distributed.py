"""Data-parallel training (torchrun, DDP, gloo on the CPU): 2 ranks train what 1 rank trains
with the same global batch; centroids are the same on every rank; evaluation counts every
example once; a killed 2-rank run resumes to the same result;
a student trains its teacher data-parallel too; -m is refused under torchrun in one line."""

import json
import os
import socket
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from forked import run as run_cli

ARGS = ["task=mrpc", "model=tiny", "objective=min_cmi", "train.max_steps=8",
        "train.batch_size=16", "train.lr=1e-3", "data.max_train_samples=120",
        "data.max_eval_samples=50"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmift(args, out, ranks=1, faults="", cwd=None, launcher="torchrun"):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "CMIFT_FAULTS": faults}
    launch = [sys.executable, "-m", "cmift"]
    if ranks > 1 and launcher == "torchrun":
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                  f"--nproc_per_node={ranks}", "-m", "cmift"]
    elif ranks > 1:  # Hydra's submitit launcher: one job whose tasks are the ranks
        launch += ["-m", "hydra/launcher=submitit_local", f"hydra.launcher.tasks_per_node={ranks}"]
    return run_cli([*launch, *args, f"output_dir={out}"], env=env, capture_output=True,
                          text=True, timeout=600, cwd=cwd)


def _record(out):
    [path] = list(out.rglob("metrics.json"))
    steps = [json.loads(line) for line in (path.parent / "steps.jsonl").read_text().splitlines()]
    return json.loads(path.read_text()), steps, path.parent


@pytest.mark.parametrize("launcher", ["torchrun", "submitit"])
def test_two_ranks_train_what_one_rank_trains(launcher, fake_glue, tmp_path):
    if launcher == "submitit":
        pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    # dropout off: each rank draws its own masks, so only a dropout-free run can be compared
    args = [*ARGS, "dropout=none", f"data.glue_dir={fake_glue}"]
    one = _cmift(args, tmp_path / "one", cwd=tmp_path)
    two = _cmift(args, tmp_path / "two", ranks=2, cwd=tmp_path, launcher=launcher)
    assert one.returncode == 0, one.stderr[-2000:]
    assert two.returncode == 0, two.stderr[-3000:]
    (a, steps_a, dir_a), (b, steps_b, dir_b) = _record(tmp_path / "one"), _record(tmp_path / "two")
    # the same run identity (a sweep may spell the overrides differently), one run directory
    assert dir_a.name.rsplit("-", 1)[1] == dir_b.name.rsplit("-", 1)[1]
    assert len(list((tmp_path / "two").rglob("metrics.json"))) == 1
    for key in ("loss", "ce", "cmi"):  # the loss curve, its CMI term (the centroids) included
        np.testing.assert_allclose([s[key] for s in steps_b], [s[key] for s in steps_a],
                                   rtol=1e-4, atol=1e-6)
    for ea, eb in zip(a["evals"], b["evals"]):
        for key in ("loss", "accuracy", "f1"):
            assert eb["dev"][key] == pytest.approx(ea["dev"][key], abs=1e-5)
    assert b["train_examples"] == a["train_examples"]
    # every dev example predicted once, in order
    rows_a = (dir_a / "predictions_validation.tsv").read_text().splitlines()
    rows_b = (dir_b / "predictions_validation.tsv").read_text().splitlines()
    assert len(rows_b) == len(rows_a) == 51  # header + 50 examples
    assert [r.split("\t")[0] for r in rows_b] == [r.split("\t")[0] for r in rows_a]


def test_a_killed_two_rank_run_resumes_to_the_same_result(fake_glue, tmp_path):
    # dropout on: each rank's random stream is checkpointed and restored
    args = [*ARGS, "train.save_every=2", "train.eval_every=4", f"data.glue_dir={fake_glue}"]
    clean = _cmift(args, tmp_path / "clean", ranks=2, cwd=tmp_path)
    assert clean.returncode == 0, clean.stderr[-3000:]
    killed = _cmift(args, tmp_path / "out", ranks=2, faults="sigkill@5", cwd=tmp_path)
    assert killed.returncode != 0
    again = _cmift(args, tmp_path / "out", ranks=2, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    (a, steps_a, _), (b, steps_b, _) = _record(tmp_path / "clean"), _record(tmp_path / "out")
    assert "resumed from" in (tmp_path / "out").joinpath(
        *_record(tmp_path / "out")[2].relative_to(tmp_path / "out").parts, "run.log").read_text()
    assert [e["dev"] for e in b["evals"]] == [e["dev"] for e in a["evals"]]
    assert [s["loss"] for s in steps_b] == [s["loss"] for s in steps_a]


def test_a_two_rank_student_trains_its_teacher_on_both_ranks(fake_glue, tmp_path):
    args = [*ARGS, "objective=kd", "dropout=none", f"data.glue_dir={fake_glue}"]
    one = _cmift(args, tmp_path / "one", cwd=tmp_path)
    two = _cmift(args, tmp_path / "two", ranks=2, cwd=tmp_path)
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-3000:]
    records = {}
    for side in ("one", "two"):
        for path in (tmp_path / side).rglob("metrics.json"):
            role = "teacher" if "teachers" in path.parts else "student"
            steps = [json.loads(x) for x in (path.parent / "steps.jsonl").read_text().splitlines()]
            records[side, role] = (json.loads(path.read_text()), steps)
    assert len(records) == 4  # one teacher and one student on each side
    assert records["two", "student"][0]["teacher"]["key"] == records["one", "student"][0][
        "teacher"]["key"]
    assert list((tmp_path / "two").rglob("train_logits.npy"))
    # the teacher keeps the standard dropout (masks drawn per rank), so the two sides agree to
    # dropout noise, not exactly (the dropout-free comparison is the min_cmi test above)
    for role in ("teacher", "student"):
        np.testing.assert_allclose([s["loss"] for s in records["two", role][1]],
                                   [s["loss"] for s in records["one", role][1]], atol=3e-2)


def test_a_sweep_under_torchrun_is_refused_in_one_line(fake_glue, tmp_path):
    message = "-m is not allowed under torchrun"
    proc = _cmift(["task=mrpc", "model=tiny", "-m", "seed=1,2", f"data.glue_dir={fake_glue}"],
                  tmp_path / "o", ranks=2, cwd=tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("cmift: error: ")]
    assert errors and message in errors[0]
    # torchrun prints its own launcher's traceback when a rank fails; none comes from cmift
    assert 'cmift/' not in "".join(line for line in proc.stderr.splitlines()
                                   if line.lstrip().startswith("File "))


# ----- in-process ranks (torch.multiprocessing, gloo) ---------------------------------------
def _rank_main(rank, world, port, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world),
                      RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from cmift.objectives.centroids import Centroids
    from cmift.ranks import RANKS, start

    start()
    gen = torch.Generator().manual_seed(0)
    r = torch.softmax(torch.randn(37, 5, generator=gen), -1)
    y = torch.randint(0, 3, (37,), generator=gen)
    # each rank fits on its own shard of the examples; then an EMA step on another shard
    c = Centroids(3, 5, momentum=0.9)
    c.fit([(r[RANKS.rank::RANKS.world], y[RANKS.rank::RANKS.world])])
    c.ema(r[:10][RANKS.rank::RANKS.world], y[:10][RANKS.rank::RANKS.world])
    results[rank] = c.q.numpy().tolist()
    dist.destroy_process_group()


def test_every_rank_fits_the_centroids_of_all_examples():
    from cmift.objectives.centroids import Centroids

    world = 2
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_rank_main, args=(world, _free_port(), results), nprocs=world, join=True)
    gen = torch.Generator().manual_seed(0)
    r = torch.softmax(torch.randn(37, 5, generator=gen), -1)
    y = torch.randint(0, 3, (37,), generator=gen)
    alone = Centroids(3, 5, momentum=0.9)
    alone.fit([(r, y)])
    alone.ema(r[:10], y[:10])
    assert results[0] == results[1]  # every rank holds the same centroids
    np.testing.assert_allclose(np.array(results[0]), alone.q.numpy(), rtol=1e-6, atol=1e-7)
