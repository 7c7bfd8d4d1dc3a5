"""tuning=lt_prefix|lt_prompt (L-Tuning): label inputs as the authors build them, parameter
counts against the formulas, golden pair scoring against an independent per-pair computation,
the pair loss and pair accuracy against NumPy, the frozen encoder unchanged by training, a
model/ that reloads, exact resume, composition with CMI and distillation, and refusals."""

import json

import numpy as np
import pytest
import torch

from cmift.config.identity import config_hash
from cmift.config.spec import ConfigError
from cmift.training.run import run
from conftest import assert_same_logits, compose

HIDDEN, LAYERS, HEADS = 64, 2, 2  # model=tiny
TINY = ["task=mrpc", "model=tiny", "train.max_steps=6", "train.batch_size=16", "train.lr=1e-2",
        "data.max_train_samples=96", "data.max_eval_samples=40"]
TEXTS = ["the two sentences differ", "they mean the same thing here"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from cmift.models.backbones import build_tiny_tokenizer

    cfg = compose("model=tiny")
    words = lambda: ["the two sentences differ . they mean the same thing here"] * 3  # noqa: E731
    return build_tiny_tokenizer(cfg.model, words, tmp_path_factory.mktemp("tok"), "lt-test")


def _tiny_model(seed=0, num_labels=2):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    return BertForSequenceClassification(BertConfig(
        vocab_size=120, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
        intermediate_size=128, num_labels=num_labels))


def _tuned(tokenizer, kind, *extra, seed=0, texts=TEXTS):
    from cmift.tuning import apply_tuning

    cfg = compose("model=tiny", f"tuning=lt_{kind}", f"task.verbalizers={json.dumps(texts)}",
                  *extra)
    return apply_tuning(_tiny_model(seed, len(texts)), cfg, cfg.model, tokenizer)


def test_label_inputs_are_padded_with_dots_inside_the_special_tokens(tokenizer):
    from cmift.tuning.label_tuning import label_token_ids

    ids = label_token_ids(tokenizer, TEXTS)
    plain = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in TEXTS]
    dot, cls, sep = (tokenizer.convert_tokens_to_ids(t) for t in (".", "[CLS]", "[SEP]"))
    longest = max(map(len, plain))
    assert ids == [[cls, *p, *[dot] * (longest - len(p)), sep] for p in plain]
    assert len({len(i) for i in ids}) == 1


@pytest.mark.parametrize("kind", ["prefix", "prompt"])
def test_trainable_parameters_match_the_formulas(tokenizer, kind):
    tuned, setup = _tuned(tokenizer, kind)
    l = tuned.length  # noqa: E741 (the paper's name)
    width = LAYERS * 2 * HIDDEN if kind == "prefix" else HIDDEN
    pool, head = HIDDEN + 1, 2 * HIDDEN + 2
    assert setup["trainable_parameters"] == pool + (l + 1) * l * width + head
    # the paper's BERT-base figures from the same formula (l = 10, 12 layers, d = 768)
    d, layers = 768, 12
    assert (d + 1) + 11 * 10 * layers * 2 * d + (2 * d + 2) == 2_029_827  # "2.03 M"
    assert (d + 1) + 11 * 10 * d + (2 * d + 2) == 86_787  # "87 k"


def _manual_pair_log_odds(tuned, kind, ids, mask):
    """Each (example, label) pair on its own, the label's prefix or prompt built in NumPy from
    the trained tensors: the independent reference for LabelTuned.forward."""
    from transformers import DynamicCache

    inner = tuned.model
    with torch.no_grad():
        h = inner.bert(input_ids=torch.tensor(tuned.label_ids)).last_hidden_state.numpy()
    w, b = tuned.pool.weight.detach().numpy(), tuned.pool.bias.detach().numpy()
    pw, pb = tuned.project.weight.detach().numpy(), tuned.project.bias.detach().numpy()
    l = len(tuned.label_ids[0])  # noqa: E741
    out = np.zeros((ids.shape[0], len(tuned.label_ids)))
    for k in range(len(tuned.label_ids)):
        s = h[k] @ w[0] + b[0]  # (l,)
        made = pw @ s + pb
        for i in range(ids.shape[0]):
            x, m = ids[i:i + 1], mask[i:i + 1]
            full = torch.cat([torch.ones(1, l, dtype=m.dtype), m], 1)
            if kind == "prefix":
                # (l, layers, 2, heads, head_dim): per layer, key then value
                kv = made.reshape(l, LAYERS, 2, HEADS, HIDDEN // HEADS)
                cache = DynamicCache([(torch.tensor(kv[:, j, 0].transpose(1, 0, 2))[None],
                                       torch.tensor(kv[:, j, 1].transpose(1, 0, 2))[None])
                                      for j in range(LAYERS)])
                logits = inner(input_ids=x, attention_mask=full, past_key_values=cache).logits
            else:
                embeds = torch.cat([torch.tensor(made.reshape(1, l, HIDDEN), dtype=torch.float32),
                                    inner.get_input_embeddings()(x)], 1)
                types = torch.zeros(1, full.shape[1], dtype=torch.long)
                logits = inner(inputs_embeds=embeds, attention_mask=full,
                               token_type_ids=types).logits
            out[i, k] = float(logits[0, 1] - logits[0, 0])
    return out


@pytest.mark.parametrize("kind", ["prefix", "prompt"])
@pytest.mark.parametrize("labels", [2, 3])
def test_pair_scoring_matches_each_pair_computed_alone(tokenizer, kind, labels):
    texts = [*TEXTS, "the same here"][:labels]
    tuned, _ = _tuned(tokenizer, kind, texts=texts)
    for p in (tuned.project.weight, tuned.pool.weight, tuned.model.classifier.weight):
        torch.nn.init.normal_(p, std=0.5)  # prefixes and scores that differ visibly
    tuned.eval()
    gen = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 100, (3, 7), generator=gen)
    mask = torch.ones_like(ids)
    mask[2, 5:] = 0  # a padded example
    with torch.no_grad():
        got = tuned(input_ids=ids, attention_mask=mask,
                    token_type_ids=torch.zeros_like(ids)).logits.numpy()
        want = _manual_pair_log_odds(tuned, kind, ids, mask)
    assert got.shape == (3, labels)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert np.ptp(got, axis=1).max() > 1e-3  # the labels' prefixes do change the scores


def _bce(z, t):
    return np.log1p(np.exp(-z)) if t else np.log1p(np.exp(z))


@pytest.mark.parametrize("k", [2, 3])
def test_pair_loss_is_the_expected_half_true_half_wrong_loss(k):
    from cmift.tuning.label_tuning import pair_loss

    rng = np.random.default_rng(0)
    z, y = rng.normal(size=(5, k)) * 2, rng.integers(0, k, 5)
    want = np.mean([0.5 * _bce(z[i, y[i]], 1)
                    + 0.5 * np.mean([_bce(z[i, c], 0) for c in range(k) if c != y[i]])
                    for i in range(5)])
    got = pair_loss(torch.tensor(z), torch.tensor(y))
    assert abs(float(got) - want) < 1e-6
    if k == 2:  # every example meets its true label and its one wrong label: a 2-way head's CE
        two_way = [0.5 * (_bce(z[i, y[i]], 1) + _bce(z[i, 1 - y[i]], 0)) for i in range(5)]
        assert abs(float(got) - np.mean(two_way)) < 1e-6


def test_pair_accuracy_against_a_direct_count():
    from cmift.data.metrics import pair_accuracy

    z = np.array([[2.0, -1.0], [0.5, 0.3], [-2.0, -3.0], [-1.0, 1.0]])
    y = np.array([0, 1, 0, 1])
    # true pairs said true: yes, yes, no, yes; wrong pairs said false: yes, no, yes, yes
    assert pair_accuracy(z, y) == 0.5 * (3 / 4) + 0.5 * (3 / 4)


def test_the_labels_loss_is_cross_entropy_over_the_pair_scores():
    from cmift.objectives import Outputs
    from cmift.objectives.ce import data_loss, task_loss

    z, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    assert torch.equal(data_loss(Outputs(z), y, False), task_loss(z, y, False))
    assert not torch.equal(data_loss(Outputs(z, pair_loss=True), y, False),
                           task_loss(z, y, False))


def test_verbalizers_name_only_the_runs_that_read_them():
    texts = 'task.verbalizers=["a","b"]'
    assert config_hash(compose("model=tiny")) == config_hash(compose("model=tiny", texts))
    lt = ("model=tiny", "tuning=lt_prompt")
    assert config_hash(compose(*lt)) != config_hash(compose(*lt, texts))


@pytest.mark.parametrize("extra, message", [
    (["task=stsb", "tuning=lt_prompt"], "tuning=lt_prompt is not allowed for task stsb"),
    (["tuning=lt_prefix", 'task.verbalizers=["one"]'],
     "task.verbalizers=['one'] is not allowed with tuning=lt_prefix: 2 non-empty label texts"),
])
def test_bad_label_tuning_settings_are_refused(extra, message):
    from cmift.config.validate import validate

    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        validate(compose("model=tiny", *extra))


def test_lt_prefix_is_refused_where_attention_takes_no_past_key_values(tokenizer):
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from cmift.tuning import apply_tuning

    model = DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=120, dim=64, n_layers=2, n_heads=2, hidden_dim=128))
    cfg = compose("model=tiny", "tuning=lt_prefix")
    with pytest.raises(ConfigError, match="tuning=lt_prefix is not allowed.*past key/values"):
        apply_tuning(model, cfg, cfg.model, tokenizer)
    cfg = compose("model=tiny", "tuning=lt_prompt")
    tuned, _ = apply_tuning(model, cfg, cfg.model, tokenizer)  # prompt works
    ids = torch.randint(5, 100, (2, 6))
    assert tuned(input_ids=ids, attention_mask=torch.ones_like(ids)).logits.shape == (2, 2)


@pytest.mark.parametrize("tuning, objective", [("lt_prefix", "min_cmi"), ("lt_prompt", "ce")])
def test_the_encoder_stays_frozen_and_model_dir_reloads(tuning, objective, fake_glue, tmp_path):
    import transformers

    from cmift.models.backbones import load_model
    from cmift.models.label_tuned import LabelTuned

    cfg = compose(*TINY, f"tuning={tuning}", f"objective={objective}",
                  f"data.glue_dir={fake_glue}", "train.save_model=true")
    kept = {}

    def keep(result, train):
        kept["model"] = result.forward.model

    record = run(cfg, tmp_path, after_fit=keep)
    assert record["status"] == "ok" and record["tuning"] == tuning
    assert 0 <= record["final"]["pair_accuracy"] <= 1
    trained = kept["model"]
    vocab = trained.model.config.vocab_size
    transformers.set_seed(cfg.seed)  # the run's own construction of the pretrained model
    fresh = load_model(cfg.model, 2, False, vocab)
    pretrained = dict(fresh.named_parameters())
    frozen = {n: p for n, p in trained.model.named_parameters() if not p.requires_grad}
    assert set(frozen) == set(pretrained) - {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(p, pretrained[n]) for n, p in frozen.items())
    saved = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert "label_tuning.safetensors" in saved and "model.safetensors" not in saved
    reloaded = LabelTuned.from_pretrained(str(tmp_path / "model"), fresh).eval()
    assert_same_logits(reloaded, trained)


def test_a_label_tuned_student_learns_from_a_full_teacher(fake_glue, tmp_path):
    cfg = compose(*TINY, "tuning=lt_prompt", "objective=kd", f"data.glue_dir={fake_glue}",
                  f"output_dir={tmp_path}")
    (tmp_path / "student").mkdir()
    record = run(cfg, tmp_path / "student")
    assert record["status"] == "ok" and record["teacher"]
    assert record["trainable_parameters"] < record["tuning_setup"]["total_parameters"] / 2
    assert np.isfinite(record["final"]["loss"]) and "pair_accuracy" in record["final"]
