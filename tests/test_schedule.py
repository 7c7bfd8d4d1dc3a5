"""train.lr_scheduler: transformers.get_scheduler's schedules; linear (the default) built by
cmift with the same arithmetic, and the one cmift hand-wrote before kept exactly (finished runs
were trained with it)."""

import math

import pytest
import torch
from forked import run as run_cli
from omegaconf import OmegaConf

from cmift.training.optim import make_scheduler


def _lrs(name, warmup_ratio, steps, lr=1e-3, total=None):
    """The learning rates of `steps` steps of a schedule planned for `total` (= steps)."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    t = OmegaConf.create({"lr_scheduler": name, "warmup_ratio": warmup_ratio})
    scheduler = make_scheduler(optimizer, t, total or steps)
    out = []
    for _ in range(steps):
        out.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    return out


def _hand_linear(step, warmup, total):
    """cmift's earlier LambdaLR factor."""
    if step < warmup:
        return step / max(1, warmup)
    return max(0.0, (total - step) / max(1, total - warmup))


@pytest.mark.parametrize("warmup_ratio, total", [(0.0, 37), (0.1, 100), (0.5, 9)])
def test_linear_keeps_the_hand_written_schedule_exactly(warmup_ratio, total):
    warmup = int(warmup_ratio * total)
    assert _lrs("linear", warmup_ratio, total) == [1e-3 * _hand_linear(s, warmup, total)
                                                   for s in range(total)]


@pytest.mark.parametrize("name", ["linear", "cosine", "constant_with_warmup"])
@pytest.mark.parametrize("warmup_ratio, total", [(0.0, 37), (0.1, 100), (0.5, 9), (0.06, 1)])
def test_every_schedule_equals_transformers_get_scheduler(name, warmup_ratio, total):
    """cmift builds `linear` itself (no transformers.optimization import): bit-equal to it."""
    from transformers import get_scheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
    theirs = get_scheduler(name, optimizer, num_warmup_steps=int(warmup_ratio * total),
                           num_training_steps=total)
    expected = []
    for _ in range(total + 2):
        expected.append(theirs.get_last_lr()[0])
        optimizer.step()
        theirs.step()
    assert _lrs(name, warmup_ratio, total + 2, total=total) == expected


def test_other_schedules_come_from_transformers():
    cosine = _lrs("cosine", 0.0, 10)
    assert cosine[0] == pytest.approx(1e-3)
    assert cosine[5] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert _lrs("constant", 0.0, 5) == [1e-3] * 5
    assert _lrs("constant_with_warmup", 0.4, 5) == pytest.approx([0, 5e-4, 1e-3, 1e-3, 1e-3])


def test_an_unknown_schedule_is_refused_in_one_line(tmp_path):
    import sys

    proc = run_cli([sys.executable, "-m", "cmift", "model=tiny",
                           "train.lr_scheduler=cosine_annealing", f"output_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "cosine_annealing" in proc.stderr and "constant_with_warmup" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
