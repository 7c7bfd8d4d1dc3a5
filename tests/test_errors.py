"""Every input a user can get wrong (config, data files, model folders, output locations, the
environment): exit code 2, one line naming the culprit and what is allowed, no traceback."""

import json
import os
import sys

import pytest
from forked import run as run_cli


def cmift(args, cwd, **env_extra):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", **env_extra}
    return run_cli([sys.executable, "-m", "cmift", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc, expected):
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert lines[-1].startswith("cmift: error: ") and expected in lines[-1], lines[-1]


@pytest.mark.parametrize("bad_row, expected", [
    ("40\tonly two columns", "train.tsv:42: 2 columns, expected at least 4"),
    ("40\ta\tb\tmaybe", "train.tsv:42: label 'maybe' is not one of ['entailment', "
                        "'not_entailment']"),
])
def test_bad_data_row_names_file_and_line_and_can_be_skipped(bad_row, expected, tmp_path):
    args = [*_rte(tmp_path, train=[RTE_HEADER, *GOOD_ROWS, bad_row]),
            f"output_dir={tmp_path}/out"]
    assert_one_line_error(cmift(args, tmp_path), expected)
    ok = cmift([*args, "data.skip_bad_rows=true"], tmp_path)
    assert ok.returncode == 0, ok.stderr[-2000:]
    records = {json.loads(p.read_text())["status"]: json.loads(p.read_text())
               for p in (tmp_path / "out").rglob("metrics.json")}
    assert set(records) == {"failed", "ok"}  # the failed attempt is recorded, not lost
    assert records["ok"]["skipped_rows"] == {"train": 1}


# ----- the bad-input table ------------------------------------------------------------------
# Every input a user can get wrong: (case, how to make it, what the one line must name).
# `make(tmp_path)` returns the command's arguments, or (arguments, extra environment).
RTE_HEADER = "index\tsentence1\tsentence2\tlabel"
GOOD_ROWS = [f"{i}\tthe court said a thing .\tthe court said .\tentailment" for i in range(40)]
WORDS = "[PAD] [UNK] [CLS] [SEP] [MASK] the court said a thing company shares .".split()


def _rte(tmp_path, train=None, dev=None, raw_train: bytes | None = None, drop=()):
    """A GLUE folder with RTE files: `train`/`dev` lists of lines (header included)."""
    folder = tmp_path / "glue" / "RTE"
    folder.mkdir(parents=True, exist_ok=True)
    files = {"train.tsv": [RTE_HEADER, *GOOD_ROWS] if train is None else train,
             "dev.tsv": [RTE_HEADER, *GOOD_ROWS[:10]] if dev is None else dev}
    for name, lines in files.items():
        if name not in drop:
            (folder / name).write_text("".join(f"{x}\n" for x in lines))
    if raw_train is not None:
        (folder / "train.tsv").write_bytes(raw_train)
    return ["task=rte", "model=tiny", "train.max_steps=2", f"data.glue_dir={tmp_path}/glue"]


def _model_folder(tmp_path, what: str):
    """A local model folder that is wrong in one way: empty, a config only, a config that is
    not JSON, no tokenizer, a 3-label classifier, or a vision model."""
    import transformers

    folder = tmp_path / "model"
    folder.mkdir()
    tiny = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    if what == "config only":
        (folder / "config.json").write_text(json.dumps({"model_type": "bert"}))
    elif what == "not json":
        (folder / "config.json").write_text("{ not json")
    elif what == "vision":
        transformers.ViTModel(transformers.ViTConfig(image_size=32, patch_size=16, **tiny)
                              ).save_pretrained(folder)
    elif what in ("no tokenizer", "3 labels"):
        config = transformers.BertConfig(vocab_size=len(WORDS), num_labels=3, **tiny)
        transformers.BertForSequenceClassification(config).save_pretrained(folder)
    if what in ("vision", "3 labels"):
        (folder / "vocab.txt").write_text("\n".join(WORDS) + "\n")
    return [f"model.name_or_path={folder}", "model.name=mine", "model.weights_sha256=null",
            "task=mrpc", "train.max_steps=1"]


def _unwritable(tmp_path):
    """An output folder nothing can be written to: read-only for a user; for root (who ignores
    permissions, as in CI containers) a place in /proc, where no folder can be made."""
    if os.geteuid() == 0:
        return "/proc/cmift-out"
    folder = tmp_path / "readonly"
    folder.mkdir()
    folder.chmod(0o555)
    return str(folder)


def _config(*args):
    return lambda t: list(args)


BAD_INPUTS = [
    # config: unknown keys, types, ranges, group options, rules across knobs
    ("unknown key", _config("train.lrr=0.1"), "Key 'lrr' not in 'TrainConfig'"),
    ("unknown + key", _config("+do_predict=true"), "do_predict"),
    ("moved key", _config("objective.lam=0.1"), "objective.lam is now objective.cmi.lam"),
    ("text for an int", _config("train.batch_size=big"),
     "Value 'big' of type 'str' could not be converted to Integer"),
    ("int for a bool knob", _config("train.fused_adamw=2"), "train.fused_adamw"),
    ("zero batch size", _config("train.batch_size=0"),
     "train.batch_size=0 is not allowed: an integer > 0"),
    ("zero learning rate", _config("train.lr=0"), "train.lr=0.0 is not allowed: a float > 0"),
    ("warmup ratio of 1", _config("train.warmup_ratio=1"), "train.warmup_ratio=1"),
    ("unknown logger", _config("logger=bogus"), "Available options in 'logger'; csv"),
    ("unknown tuning method", _config("tuning=bogus"), "Available options in 'tuning'; full"),
    ("unknown recipe", _config("recipe=bogus"),
     "recipe='bogus' is not allowed: one of ['bert_base'"),
    ("label texts for the wrong number of classes",
     _config("tuning=lt_prompt", 'task.verbalizers=["one"]'),
     "task.verbalizers=['one'] is not allowed with tuning=lt_prompt: 2 non-empty label texts"),
    ("label-token tuning on a regression task", _config("tuning=lt_prefix", "task=stsb"),
     "tuning=lt_prefix is not allowed for task stsb"),
    ("null for a group", _config("logger=null"),
     "logger=null is not allowed: a config group takes one of its options"),
    ("zero patience", _config("train.early_stopping_patience=0"),
     "train.early_stopping_patience=0 is not allowed: null (off) or an integer > 0"),
    ("int for keep_best", _config("train.keep_best=2"), "train.keep_best"),
    ("zero prefix length", _config("tuning=prefix", "tuning.prefix.virtual_tokens=0"),
     "tuning.prefix.virtual_tokens=0 is not allowed"),
    ("negative lam", _config("objective=min_cmi", "objective.cmi.lam=-1"),
     "objective.cmi.lam=-1.0 is not allowed: a float >= 0"),
    ("negative temperature", _config("objective=kd", "distillation.kd.temperature=-2"),
     "distillation.kd.temperature=-2"),
    ("selection fraction of 1", _config("data.selection_fraction=1.0"),
     "data.selection_fraction=1.0"),
    ("sequence longer than the model takes", _config("data.max_seq_length=1000"),
     "model tiny takes at most 512 positions"),
    ("unknown precision", _config("train.precision=fp8"),
     "Invalid value 'fp8', expected one of [auto, fp32, bf16, fp16]"),
    ("unknown task", _config("task=foo"), "Could not find 'task/foo'; Available options in "
                                          "'task'; cola"),
    ("unknown model", _config("model=bert_huge"), "bert_huge"),
    ("unknown dropout method", _config("dropout=dropconnect"), "dropconnect"),
    ("unknown experiment", _config("experiment=nope"), "nope"),
    ("p_min above p_max", _config("dropout=guided", "dropout.guided.p_min=0.5"),
     "dropout.guided.p_min=0.5"),
    ("CMI on a regression task", _config("task=stsb", "objective=min_cmi"),
     "task stsb is regression"),
    ("kd without a distillation loss", _config("objective=kd", "distillation=none"),
     "distillation='none' is not allowed"),
    ("distillation loss without kd", _config("objective=ce", "distillation=wttm"),
     "distillation='wttm' is not allowed"),
    ("unknown student model", _config("objective=kd", "distillation.student=bert_large"),
     "distillation.student='bert_large'"),
    # data files: encodings, columns, labels, empty and header-only files, missing splits
    ("empty train file", lambda t: _rte(t, train=[]), "train.tsv"),
    ("header-only train file", lambda t: _rte(t, train=[RTE_HEADER]), "train.tsv"),
    ("missing dev file", lambda t: _rte(t, drop=("dev.tsv",)), "dev.tsv"),
    ("not UTF-8", lambda t: _rte(t, raw_train=(RTE_HEADER + "\n0\tcaf\xe9 au lait\tx\t"
                                               "entailment\n").encode("latin-1")), "train.tsv"),
    ("wrong header", lambda t: _rte(t, train=["a\tb\tc\td", *GOOD_ROWS]), "train.tsv"),
    ("too few columns", lambda t: _rte(t, train=[RTE_HEADER, *GOOD_ROWS, "40\ttwo columns"]),
     "train.tsv:42: 2 columns, expected at least 4"),
    ("unknown label", lambda t: _rte(t, train=[RTE_HEADER, *GOOD_ROWS, "40\ta\tb\tmaybe"]),
     "train.tsv:42: label 'maybe' is not one of ['entailment', 'not_entailment']"),
    ("missing GLUE folder", lambda t: ["task=rte", f"data.glue_dir={t}/nope"],
     "/nope/RTE/train.tsv"),
    ("no GLUE_DIR and the hub unreachable", _config("data.glue_dir=null"),
     "set data.glue_dir or $GLUE_DIR"),
    # model folders and hub ids
    ("model folder missing", lambda t: [f"model.name_or_path={t}/nomodel", "model.name=x",
                                        "model.weights_sha256=null", "task=mrpc"], "/nomodel"),
    ("empty model folder", lambda t: _model_folder(t, "empty"), "model"),
    ("model folder with a config only", lambda t: _model_folder(t, "config only"), "model"),
    ("model config not JSON", lambda t: _model_folder(t, "not json"), "config.json"),
    ("model folder without a tokenizer", lambda t: _model_folder(t, "no tokenizer"),
     "holds no tokenizer"),
    ("checkpoint of another label count", lambda t: _model_folder(t, "3 labels"),
     "with 3 labels; this task has 2"),
    ("checkpoint of another architecture", lambda t: _model_folder(t, "vision"),
     "a 'vit' model"),
    ("hub id unreachable", _config("model.name_or_path=someone/no-such-model",
                                   "model.name=x", "model.weights_sha256=null", "task=mrpc"),
     "someone/no-such-model"),
    ("weights checksum mismatch", _config("model=minilm_l6", "model.weights_sha256=" + "0" * 64,
                                          "task=mrpc",
                                          "train.max_steps=1"), "sha256"),
    # where results go: a file where a folder should be, read-only, full
    ("output_dir is a file", lambda t: (t / "afile").write_text("x") and
     ["model=tiny", f"output_dir={t}/afile"], "afile"),
    ("output_dir not writable", lambda t: [f"output_dir={_unwritable(t)}"], "cmift-out"
     if os.geteuid() == 0 else "readonly"),
    ("output disk full", lambda t: (["train.save_every=1", "train.max_steps=2"],
                                    {"CMIFT_FAULTS": "enospc@metrics.json#2"}),
     "no space left"),
]


@pytest.mark.parametrize("case, make, expected", BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_table(case, make, expected, tmp_path, fake_glue):
    """One line naming the culprit and what is allowed, exit 2, no traceback; nothing left
    half-written (every file under the output folder is whole JSON where it is JSON)."""
    made = make(tmp_path)
    args, env = made if isinstance(made, tuple) else (made, {})
    if not any(a.startswith("model.name_or_path=") or a.startswith("model=") for a in args):
        args.append("model=tiny")
    if not any(a.startswith("data.glue_dir=") for a in args):
        args.append(f"data.glue_dir={fake_glue}")
    if not any(a.startswith("output_dir=") for a in args):
        args.append(f"output_dir={tmp_path}/out")
    assert_one_line_error(cmift(args, tmp_path, **env), expected)
    for path in (tmp_path / "out").rglob("*.json"):
        json.loads(path.read_text())  # written atomically: never torn
    assert not [p for p in (tmp_path / "out").rglob(".*") if p.is_file()]  # no temp files


def test_the_table_covers_every_class():
    assert len(BAD_INPUTS) >= 30


def test_a_very_long_row_is_read_and_truncated(tmp_path, fake_glue):
    """Not an error: a 300,000-character sentence (over csv's default field limit) is read
    and truncated to data.max_seq_length like any other."""
    long_row = "40\t" + " ".join(["court"] * 50_000) + "\tthe court said .\tentailment"
    args = _rte(tmp_path, train=[RTE_HEADER, *GOOD_ROWS, long_row])
    proc = cmift([*args, f"output_dir={tmp_path}/out"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]

