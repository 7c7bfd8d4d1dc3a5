import pytest
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from cmift.config.identity import config_hash, run_name
from cmift.config.spec import ConfigError
from cmift.config.validate import validate
from cmift.data.tasks import TASKS
from conftest import compose

MODELS = ["bert_base", "distilbert", "minilm_l6", "tiny"]


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_task_and_model_composes(task, model):
    cfg = compose(f"task={task}", f"model={model}")
    validate(cfg)
    assert cfg.task.name == task and cfg.model.name == model
    assert cfg.train.batch_size == 32 and cfg.data.max_seq_length == 128
    # each model's recipe (conf/recipe/): MiniLM's tuned one, run_glue's for the others
    tuned = (1e-4, 5) if model == "minilm_l6" else (2e-5, 3)
    assert (cfg.train.lr, cfg.train.epochs) == tuned


def test_recipes_follow_the_model_and_yield_to_the_command_line():
    assert (compose("recipe=run_glue").train.lr, compose("recipe=run_glue").train.epochs) == \
        (2e-5, 3)
    assert compose("train.lr=3e-5").train.lr == 3e-5  # the command line wins
    assert compose("experiment=ncmi_vs_ce").train.lr == 2e-5  # the recipe it ran with
    assert compose("model=bert_base").train.epochs == 3


def test_a_users_model_without_a_recipe_gets_the_schema_defaults(tmp_path):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "mine.yaml").write_text("name: mine\nname_or_path: tiny\n")
    cfg = compose(f"hydra.searchpath=[file://{tmp_path}]", "model=mine")
    assert (cfg.model.name, cfg.train.lr, cfg.train.epochs) == ("mine", 2e-5, 3)


def test_task_configs_match_the_registry():
    from cmift.cli import CONF_DIR

    assert sorted(p.stem for p in (CONF_DIR / "task").glob("*.yaml")) == sorted(TASKS)


def test_unknown_key_is_refused():
    with pytest.raises(ConfigCompositionException, match="lrr"):
        compose("train.lrr=0.1")


def test_wrong_type_is_refused():
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose("train.batch_size=big")


def test_bad_precision_lists_the_choices():
    with pytest.raises(ConfigCompositionException) as e:
        compose("train.precision=fp8")
    assert "bf16" in str(e.value.__cause__ or e.value)


@pytest.mark.parametrize("override, key", [
    ("train.batch_size=0", "train.batch_size"),
    ("train.lr=-1", "train.lr"),
    ("train.grad_accum=0", "train.grad_accum"),
    ("train.warmup_ratio=1.5", "train.warmup_ratio"),
    ("data.max_seq_length=0", "data.max_seq_length"),
])
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        validate(compose(override))


def test_glue_dir_defaults_to_env(monkeypatch):
    monkeypatch.setenv("GLUE_DIR", "/data/glue")
    assert compose().data.glue_dir == "/data/glue"
    monkeypatch.delenv("GLUE_DIR")
    assert compose().data.glue_dir is None


def test_run_name_is_readable_and_unique_per_config(fake_glue):
    a = compose("task=rte", "seed=3", "train.epochs=5", f"data.glue_dir={fake_glue}")
    b = compose("task=rte", "seed=3", "train.epochs=4", f"data.glue_dir={fake_glue}")
    name_a = run_name(a, ["task=rte", "seed=3", "train.epochs=5"])
    assert name_a.startswith("rte/ce/minilm_l6/seed=3,train.epochs=5-")
    assert config_hash(a) != config_hash(b)
    # how many threads run and where logs go do not change the result, nor the name
    c = compose("task=rte", "seed=3", "train.epochs=5", f"data.glue_dir={fake_glue}",
                "threads=1", "train.log_every=3", "train.save_every=7")
    assert config_hash(a) == config_hash(c)
    assert run_name(c, ["model.name_or_path=/a/b c"]).split("/")[3].startswith(
        "seed=3,model.name_or_path=_a_b_c-")


def test_knobs_a_run_does_not_use_do_not_split_it():
    """`-m objective=ce,min_cmi objective.cmi.lam=0.01,0.1` trains ce once, not once per lam."""
    ce = [compose("objective=ce", f"objective.cmi.lam={v}") for v in (0.01, 0.1)]
    assert config_hash(ce[0]) == config_hash(ce[1])
    assert run_name(ce[0], ["objective=ce", "objective.cmi.lam=0.01"]) == \
        run_name(ce[1], ["objective=ce", "objective.cmi.lam=0.1"])
    cmi = [compose("objective=min_cmi", f"objective.cmi.lam={v}") for v in (0.01, 0.1)]
    assert config_hash(cmi[0]) != config_hash(cmi[1])
    # the teacher's lam matters to max_cmi_kd, the kd loss's temperature not to wttm
    assert config_hash(compose("objective=max_cmi_kd", "objective.cmi.lam=0.1")) != \
        config_hash(compose("objective=max_cmi_kd", "objective.cmi.lam=0.2"))
    assert config_hash(compose("objective=kd", "distillation=wttm",
                               "distillation.kd.temperature=1")) == \
        config_hash(compose("objective=kd", "distillation=wttm", "distillation.kd.temperature=8"))
