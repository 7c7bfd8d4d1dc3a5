"""tuning=full|prefix|prompt: peft on a frozen encoder; parameter counts against the formulas,
the frozen encoder unchanged by training, exact resume with checkpoints of the trained tensors
only, a loadable adapter, and prefix refused where attention takes no past key/values."""

import json
import signal

import numpy as np
import pytest
import torch

from cmift.config.identity import config_hash
from cmift.config.spec import ConfigError
from cmift.training.run import run
from conftest import assert_same_logits, cli, compose, dev_evals

pytest.importorskip("peft")

TINY = ["task=mrpc", "model=tiny", "train.max_steps=6", "train.batch_size=16", "train.lr=1e-2",
        "data.max_train_samples=96", "data.max_eval_samples=40"]
HIDDEN, LAYERS, HEAD = 64, 2, 64 * 2 + 2  # model=tiny; the head: Linear(hidden, 2 labels)


def _tiny_model(seed=0):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=100, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=2,
        intermediate_size=128, num_labels=2))


@pytest.mark.parametrize("tuning, extra, expected", [
    ("prefix", [], 20 * LAYERS * 2 * HIDDEN + HEAD),  # K and V prefixes in every layer
    ("prefix", ["tuning.prefix.virtual_tokens=5"], 5 * LAYERS * 2 * HIDDEN + HEAD),
    ("prompt", [], 20 * HIDDEN + HEAD),  # soft prompt embeddings
    ("full", [], None)])
def test_trainable_parameters_match_the_formulas(tuning, extra, expected):
    from cmift.tuning import apply_tuning

    model = _tiny_model()
    cfg = compose("model=tiny", f"tuning={tuning}", *extra)
    tuned, setup = apply_tuning(model, cfg, cfg.model)
    total = sum(p.numel() for p in _tiny_model().parameters())
    assert setup["trainable_parameters"] == (expected if expected is not None else total)
    assert setup["method"] == tuning


def test_full_is_the_old_run_identity():
    assert config_hash(compose("model=tiny")) == config_hash(compose("model=tiny", "tuning=full"))
    assert config_hash(compose("model=tiny", "tuning=prefix")) != config_hash(compose("model=tiny"))


def test_prefix_is_refused_where_attention_takes_no_past_key_values():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from cmift.tuning import apply_tuning

    model = DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=100, dim=64, n_layers=2, n_heads=2, hidden_dim=128))
    cfg = compose("model=tiny", "tuning=prefix")
    with pytest.raises(ConfigError, match="tuning=prefix is not allowed.*past key/values"):
        apply_tuning(model, cfg, cfg.model)
    apply_tuning(model, compose("model=tiny", "tuning=prompt"), cfg.model)  # prompt works


def test_the_prefix_argument_is_found_under_either_name():
    """transformers 5.24 renamed the forward's past_key_values to cache."""
    from cmift.models.backbones import cache_argument

    class Renamed(torch.nn.Module):
        base_model_prefix = "bert"  # absent: the model is its own backbone

        def forward(self, input_ids, cache=None):
            return input_ids

    class Old(Renamed):
        def forward(self, input_ids, past_key_values=None):
            return input_ids

    class NoCache(Renamed):
        def forward(self, input_ids, attention_mask=None):
            return input_ids

    assert cache_argument(Renamed()) == "cache"
    assert cache_argument(Old()) == "past_key_values"
    assert cache_argument(NoCache()) is None
    assert cache_argument(_tiny_model()) in ("cache", "past_key_values")


@pytest.mark.parametrize("tuning", ["prefix", "prompt"])
def test_the_encoder_stays_frozen_and_the_adapter_reloads(tuning, fake_glue, tmp_path):
    import transformers
    from peft import PeftModel

    from cmift.models.backbones import load_model

    cfg = compose(*TINY, f"tuning={tuning}", "objective=min_cmi", f"data.glue_dir={fake_glue}")
    kept = {}

    def keep(result, train):
        kept["model"] = result.forward.model

    record = run(cfg, tmp_path, after_fit=keep)
    assert record["status"] == "ok" and record["tuning"] == tuning
    trained = kept["model"]
    transformers.set_seed(cfg.seed)  # the run's own construction of the pretrained model
    fresh = load_model(cfg.model, 2, False, trained.get_base_model().config.vocab_size)
    # every frozen tensor (the head's original copy too: peft trains a copy of it)
    frozen = {n.replace(".original_module", ""): p for n, p in
              trained.get_base_model().named_parameters() if not p.requires_grad}
    pretrained = dict(fresh.named_parameters())
    assert set(frozen) == set(pretrained)
    assert all(torch.equal(p, pretrained[n]) for n, p in frozen.items())
    # what trained did change, and model/ is an adapter that reloads onto a fresh base
    assert any(p.requires_grad for p in trained.parameters())
    assert (tmp_path / "model" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "model" / "model.safetensors").exists()
    reloaded = PeftModel.from_pretrained(fresh, str(tmp_path / "model")).eval()
    assert_same_logits(reloaded, trained)


@pytest.mark.parametrize("tuning", ["prefix", "lt_prefix"])
def test_a_run_resumes_exactly_from_checkpoints_of_trained_tensors(tuning, fake_glue, tmp_path):
    args = [*TINY, f"tuning={tuning}", "train.save_every=2", "train.eval_every=3",
            f"data.glue_dir={fake_glue}"]
    cmift = cli(args, tmp_path)

    assert cmift(tmp_path / "clean").returncode == 0
    assert cmift(tmp_path / "out", "sigkill@4").returncode == -signal.SIGKILL
    [ckpt] = sorted((tmp_path / "out").rglob("step-00000004.pt"))
    payload = torch.load(ckpt, weights_only=True)
    again = cmift(tmp_path / "out")
    assert again.returncode == 0, again.stderr[-2000:]
    [clean] = [json.loads(p.read_text()) for p in (tmp_path / "clean").rglob("metrics.json")]
    [resumed] = [json.loads(p.read_text()) for p in (tmp_path / "out").rglob("metrics.json")]
    assert dev_evals(resumed) == dev_evals(clean)
    trainable = resumed["trainable_parameters"]
    assert sum(t.numel() for t in payload["model"].values()) == trainable  # trained tensors only
    assert trainable < resumed["tuning_setup"]["total_parameters"]
    if tuning == "prefix":
        assert trainable == 20 * LAYERS * 2 * HIDDEN + HEAD
    assert np.isfinite(resumed["final"]["loss"])
    # the tables name the method and show its trainable parameters
    from cmift.cli import table_main

    table_main([str(tmp_path / "clean"), "--no-plots"])
    glue = (tmp_path / "clean" / "tables" / "glue.md").read_text()
    assert f"tiny ce +{tuning} tuning" in glue and "| trainable" in glue
    assert f"{trainable / 1000:.1f}k" in glue
    assert "train ex/s" in glue and f"{clean['train_examples_per_second']:.1f}" in glue
