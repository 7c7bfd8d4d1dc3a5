"""Bad configs and bad data files: exit code 2, one line naming the problem, no traceback."""

import json
import os
import subprocess
import sys

import pytest

BAD_CONFIGS = [
    (["train.lrr=0.1"], "Key 'lrr' not in 'TrainConfig'"),
    (["train.batch_size=big"], "Value 'big' of type 'str' could not be converted to Integer"),
    (["task=foo"], "Could not find 'task/foo'; Available options in 'task'; cola"),
    (["train.precision=fp8"], "Invalid value 'fp8', expected one of [auto, fp32, bf16, fp16]"),
    (["objective=min_cmi", "objective.cmi.lam=-1"],
     "objective.cmi.lam=-1.0 is not allowed: a float >= 0"),
    (["train.batch_size=0"], "train.batch_size=0 is not allowed: an integer > 0"),
    (["train.lr=0"], "train.lr=0.0 is not allowed: a float > 0"),
    (["task=stsb", "objective=min_cmi"], "task stsb is regression"),
    (["objective=kd", "distillation=none"], "distillation='none' is not allowed"),
    (["objective=ce", "distillation=wttm"], "distillation='wttm' is not allowed"),
    (["model=tiny", "data.max_seq_length=1000"], "model tiny takes at most 512 positions"),
    (["objective=kd", "distillation.student=bert_large"], "distillation.student='bert_large'"),
]


def cmift(args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "cmift", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc, expected):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("cmift: error: ") and expected in lines[-1], lines[-1]


@pytest.mark.parametrize("args, expected", BAD_CONFIGS)
def test_bad_config_is_one_line_exit_2(args, expected, tmp_path, fake_glue):
    proc = cmift([*args, "model=tiny" if "model=" not in " ".join(args) else "seed=1",
                  f"data.glue_dir={fake_glue}", f"output_dir={tmp_path}"], tmp_path)
    assert_one_line_error(proc, expected)


def _glue_with(tmp_path, train_lines):
    folder = tmp_path / "glue" / "RTE"
    folder.mkdir(parents=True)
    header = "index\tsentence1\tsentence2\tlabel"
    good = [f"{i}\tthe court said a thing .\tthe court said .\tentailment" for i in range(40)]
    (folder / "train.tsv").write_text("\n".join([header, *good, *train_lines]) + "\n")
    (folder / "dev.tsv").write_text("\n".join([header, *good[:10]]) + "\n")
    return str(tmp_path / "glue")


@pytest.mark.parametrize("bad_row, expected", [
    ("40\tonly two columns", "train.tsv:42: 2 columns, expected at least 4"),
    ("40\ta\tb\tmaybe", "train.tsv:42: label 'maybe' is not one of ['entailment', "
                        "'not_entailment']"),
])
def test_bad_data_row_names_file_and_line_and_can_be_skipped(bad_row, expected, tmp_path):
    glue = _glue_with(tmp_path, [bad_row])
    args = ["task=rte", "model=tiny", "train.max_steps=2", f"data.glue_dir={glue}",
            f"output_dir={tmp_path}/out"]
    assert_one_line_error(cmift(args, tmp_path), expected)
    ok = cmift([*args, "data.skip_bad_rows=true"], tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    records = {json.loads(p.read_text())["status"]: json.loads(p.read_text())
               for p in (tmp_path / "out").rglob("metrics.json")}
    assert set(records) == {"failed", "ok"}  # the failed attempt is recorded, not lost
    assert records["ok"]["skipped_rows"] == {"train": 1}


def test_missing_glue_folder_names_path_and_expected_files(tmp_path):
    proc = cmift(["task=rte", "model=tiny", f"data.glue_dir={tmp_path}/nope",
                  f"output_dir={tmp_path}/out"], tmp_path)
    assert_one_line_error(proc, f"missing {tmp_path}/nope/RTE/train.tsv")
    assert "expected train.tsv, dev.tsv" in proc.stderr
