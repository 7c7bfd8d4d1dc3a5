"""Progress: a bar per no-grad pass under the training bar on a terminal, a log line otherwise;
a job prefix on sweep logs."""

import logging
import os
import sys

from forked import run as run_cli

from cmift.training.progress import TrainProgress


def test_pass_bars_nest_under_the_training_bar_on_a_terminal():
    progress = TrainProgress(total=4)
    progress.bar.disable = False  # as on a terminal
    seen = []
    with progress.shown(0):
        with progress.pass_shown("eval validation", 10) as advance:
            advance(4)
            advance(6)
            [task] = [t for t in progress.bar.tasks if t.description == "eval validation"]
            seen.append(task.completed)
        progress.advance(1)
    assert seen == [10]
    assert [t.description for t in progress.bar.tasks] == ["train"]  # the pass bar is gone


def test_passes_log_one_line_without_a_terminal(caplog):
    progress = TrainProgress(total=4)
    progress.bar.disable = True
    with caplog.at_level(logging.INFO):
        with progress.pass_shown("objective pass over train", 64) as advance:
            advance(64)
        with progress.pass_shown("eval validation", 32, plain_line=False):
            pass
    assert [r.getMessage() for r in caplog.records] == ["objective pass over train: 64 examples"]


def test_sweep_console_lines_carry_the_job_number(fake_glue, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = run_cli([sys.executable, "-m", "cmift", "-m", "task=mrpc", "model=tiny",
                           "train.max_steps=2", "seed=1,2", f"data.glue_dir={fake_glue}",
                           f"output_dir={tmp_path}"], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stderr.splitlines()
    assert any(" [#0] run " in line for line in lines)
    assert any(" [#1] run " in line for line in lines)
    single = run_cli([sys.executable, "-m", "cmift", "task=mrpc", "model=tiny",
                             "train.max_steps=2", f"data.glue_dir={fake_glue}",
                             f"output_dir={tmp_path}/one"], capture_output=True, text=True,
                            timeout=600, cwd=tmp_path, env=env)
    assert single.returncode == 0 and "[#" not in single.stderr
