"""Method specs: every config option composes, validates and builds; unknown options are refused
at once; run identities are what a run reads plus its data, and survive new knobs."""

import dataclasses
import os
import shutil
import sys
from pathlib import Path

import pytest
from forked import run as run_cli
from omegaconf import OmegaConf

from cmift.config import schema as schema_mod
from cmift.config import spec
from cmift.config.identity import config_hash, identity
from cmift.config.schema import CONF_DIR
from cmift.config.spec import ConfigError, knob, method, options
from cmift.config.validate import validate
from cmift.data.tasks import TASKS
from cmift.objectives import Objective, build
from cmift.training.run import run
from cmift.training.teacher import teacher_config
from conftest import compose

TINY = ["model=tiny", "train.max_steps=2", "data.max_train_samples=64",
        "data.max_eval_samples=16", "train.batch_size=16"]


def yaml_options(group):
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["objective", "distillation", "dropout"])
def test_yaml_options_are_exactly_the_registered_methods(group):
    assert yaml_options(group) == options(group)


@pytest.mark.parametrize("objective", yaml_options("objective"))
@pytest.mark.parametrize("distillation", yaml_options("distillation"))
def test_every_objective_and_loss_composes_validates_and_builds(objective, distillation):
    cfg = compose(f"objective={objective}", f"distillation={distillation}", "model=tiny")
    spec_ = method("objective", objective)
    if spec_.distils == (distillation == "none"):  # a student needs a loss; others refuse one
        with pytest.raises(ConfigError, match="^distillation="):
            validate(cfg)
        return
    validate(cfg)
    teacher = (lambda batch: None) if spec_.distils else None
    built = build(cfg, TASKS["mrpc"], teacher=teacher)
    assert isinstance(built, Objective)
    assert cfg.objective.name == objective


@pytest.mark.parametrize("preset", yaml_options("experiment"))
def test_every_experiment_preset_composes_and_validates(preset):
    cfg = compose(f"experiment={preset}", return_hydra=True)
    params = cfg.hydra.sweeper.params
    assert params and cfg.output_dir.startswith("results/")
    first = {k: str(v).split(",")[0] for k, v in params.items()}
    validate(compose(f"experiment={preset}", *(f"{k}={v}" for k, v in first.items())))


@pytest.mark.parametrize("model", yaml_options("model"))
def test_every_model_composes_and_validates(model):
    validate(compose(f"model={model}"))


def test_regression_support_comes_from_the_spec():
    for name in options("objective"):
        cfg = compose("task=stsb", f"objective={name}")
        if method("objective", name).regression:
            validate(cfg)
        else:
            with pytest.raises(ConfigError, match="stsb is regression"):
                validate(cfg)


def _cmift(*args, cwd):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return run_cli([sys.executable, "-m", "cmift", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args, expected", [
    (["objective=foo"], "Could not find 'objective/foo'"),
    (["objective.name=foo"], "objective.name='foo' is not allowed: one of ['ce', 'cmic'"),
    (["distillation.name=foo", "objective=kd"], "distillation.name='foo' is not allowed"),
    (["objective=min_cmi", "objective.lam=0.3"], "objective.lam is now objective.cmi.lam"),
])
def test_unknown_options_are_refused_at_once(args, expected, tmp_path):
    proc = _cmift(*args, "model=tiny", f"output_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], lines
    assert not list(tmp_path.rglob("steps.jsonl"))  # refused before anything ran


# ----- run identity ----------------------------------------------------------------------------
def test_identity_holds_only_what_the_run_reads(fake_glue):
    ce = identity(compose("objective=ce", f"data.glue_dir={fake_glue}"))
    assert set(ce["objective"]) == {"name"} and "distillation" not in ce
    assert "glue_dir" not in ce["data"] and set(ce["data"]["fingerprint"]) == {"train",
                                                                             "validation"}
    assert "tiny" not in ce["model"] and "log_every" not in ce["train"]
    kd = identity(compose("objective=max_cmi_kd", "distillation=ttm"))
    assert set(kd["objective"]) == {"name", "cmi", "version"}  # the teacher's knobs
    assert set(kd["distillation"]) == {"name", "student", "student_layers", "ttm"}


@pytest.fixture()
def new_knobs(monkeypatch):
    """Simulates adding knobs in a later version: a new field (at its legacy value) in the cmi
    namespace, and a new namespace with its own knob; rebuilds the schema around them."""
    cmi = spec.KNOBS["objective.cmi"]
    grown = dataclasses.make_dataclass("CMIKnobs", [
        ("new_term_weight", float, knob(0.0, spec.at_least(0), legacy=0.0))], bases=(cmi,))

    @dataclasses.dataclass
    class LaterKnobs:
        strength: float = knob(0.5)

    monkeypatch.setitem(spec.KNOBS, "objective.cmi", grown)
    monkeypatch.setitem(spec.KNOBS, "objective.later", LaterKnobs)

    def rebuild():
        schema_mod.schema.cache_clear()
        schema_mod.register_configs()

    rebuild()
    yield
    monkeypatch.undo()
    rebuild()


def test_new_knobs_do_not_re_key_finished_runs(glue_dir, tmp_path, request):
    """A finished run's record keeps its hash when a knob is added to a method it does not use,
    and to its own method at the knob's legacy value: a sweep still skips it."""
    records = {}
    for name in ("ce", "min_cmi"):
        cfg = compose(*TINY, f"objective={name}", f"data.glue_dir={glue_dir}")
        (tmp_path / name).mkdir()
        records[name] = run(cfg, tmp_path / name)
    request.getfixturevalue("new_knobs")
    for name, record in records.items():
        saved = OmegaConf.load(tmp_path / name / "config.yaml")
        again = OmegaConf.merge(OmegaConf.structured(schema_mod.schema()), saved)
        assert "new_term_weight" in again.objective.cmi  # the schema did grow
        assert config_hash(again) == record["config_hash"], name
    grown = compose(*TINY, "objective=min_cmi", f"data.glue_dir={glue_dir}",
                    "objective.cmi.new_term_weight=0.5")
    assert config_hash(grown) != records["min_cmi"]["config_hash"]  # away from legacy: new run


def test_data_copy_is_the_same_run_and_changed_data_is_not(fake_glue, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(fake_glue, copy)
    reordered = tmp_path / "reordered"
    shutil.copytree(fake_glue, reordered)
    train = reordered / "MRPC" / "train.tsv"
    header, *rows = train.read_text().splitlines()
    train.write_text("\n".join([header, *reversed(rows)]) + "\n")
    hashes = {name: config_hash(compose("objective=kd", f"data.glue_dir={folder}"))
              for name, folder in (("a", fake_glue), ("copy", copy), ("reordered", reordered))}
    assert hashes["a"] == hashes["copy"] != hashes["reordered"]
    teachers = {name: config_hash(teacher_config(compose("objective=kd", f"data.glue_dir={d}")),
                                  "teacher")
                for name, d in (("a", fake_glue), ("copy", copy), ("reordered", reordered))}
    assert teachers["a"] == teachers["copy"] != teachers["reordered"]


def test_teacher_key_ignores_evaluation_settings(fake_glue):
    def key(*overrides):
        cfg = compose("objective=max_cmi_kd", f"data.glue_dir={fake_glue}", *overrides)
        return config_hash(teacher_config(cfg), "teacher")

    base = key()
    assert key("train.eval_every=10", "data.max_eval_samples=50") == base
    assert key("distillation.kd.temperature=8", "distillation=ttm") == base  # student knobs
    assert key("objective.cmi.lam=0.3") != base and key("train.lr=3e-5") != base
    assert key("data.max_train_samples=100") != base


def test_teacher_recipe_of_its_own(fake_glue):
    """distillation.teacher_lr / teacher_epochs change the teacher's recipe and key, never the
    student's train settings; null leaves every key as it was (legacy)."""
    base = compose("objective=kd", f"data.glue_dir={fake_glue}", "train.lr=5e-5",
                   "train.epochs=2")
    own = compose("objective=kd", f"data.glue_dir={fake_glue}", "train.lr=5e-5",
                  "train.epochs=2", "distillation.teacher_lr=1e-4",
                  "distillation.teacher_epochs=5")
    teacher = teacher_config(own)
    assert (teacher.train.lr, teacher.train.epochs) == (1e-4, 5)
    assert (own.train.lr, own.train.epochs) == (5e-5, 2)
    assert "teacher_lr" not in identity(base).get("distillation", {})
    assert config_hash(own) != config_hash(base)
    # the teacher is the one a student at the teacher's recipe would get
    same = compose("objective=kd", f"data.glue_dir={fake_glue}", "train.lr=1e-4",
                   "train.epochs=5")
    assert config_hash(teacher, "teacher") == config_hash(teacher_config(same), "teacher")
    assert config_hash(teacher_config(base), "teacher") != config_hash(teacher, "teacher")


@pytest.mark.parametrize("override, message", [
    ("distillation.teacher_lr=0", r"distillation.teacher_lr=0.0 is not allowed: null \(the "),
    ("distillation.teacher_epochs=0", r"distillation.teacher_epochs=0 is not allowed"),
    ("distillation.teacher_epochs=5 train.max_steps=20",
     r"distillation.teacher_epochs=5 is not allowed: null while train.max_steps=20 is set"),
])
def test_bad_teacher_recipe_is_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose("objective=kd", *override.split()))
    validate(compose("objective=kd", "train.max_steps=20"))  # max_steps alone is fine


def test_changed_train_file_is_trained_again_not_skipped(fake_glue, tmp_path):
    copy = Path(tmp_path / "glue")
    shutil.copytree(fake_glue, copy)
    args = [*TINY, "task=mrpc", f"data.glue_dir={copy}", f"output_dir={tmp_path}/out"]
    first = _cmift(*args, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    train = copy / "MRPC" / "train.tsv"
    header, *rows = train.read_text().splitlines()
    train.write_text("\n".join([header, *reversed(rows)]) + "\n")
    second = _cmift(*args, cwd=tmp_path)
    assert second.returncode == 0 and "skipped" not in second.stdout
    assert len(list((tmp_path / "out").rglob("metrics.json"))) == 2
