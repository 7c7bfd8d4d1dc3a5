"""The dropout group: Fisher per-example gradients (exact), the sites by name, rates that take
effect, the schedules, Gaussian noise, identities and end-to-end runs on tiny models."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from forked import run as run_cli
from omegaconf import OmegaConf

from cmift.config.identity import config_hash, identity
from cmift.config.spec import ConfigError
from cmift.config.validate import validate
from cmift.dropout import fisher
from cmift.dropout.gaussian import gaussian_dropout_class, gaussian_noise
from cmift.dropout.guided import schedule_rates
from cmift.dropout.masks import draw_masks, uniform_dropout
from cmift.dropout.sites import dropout_modules, find_sites
from cmift.training.teacher import teacher_config
from tests.conftest import REPO, compose

V = 60


def tiny_bert(num_labels=2, attn_implementation=None):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=V, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=num_labels))
    if attn_implementation:
        model.set_attn_implementation(attn_implementation)
    return model


def tiny_distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    torch.manual_seed(0)
    return DistilBertForSequenceClassification(DistilBertConfig(
        vocab_size=V, dim=16, n_layers=2, n_heads=2, hidden_dim=32))


def padded_batch(n=5, width=9, seed=1):
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, width + 1, (n,), generator=g)
    lengths[0] = width
    ids = torch.randint(5, V, (n, width), generator=g)
    mask = (torch.arange(width)[None] < lengths[:, None]).long()
    ids = ids * mask  # pad id 0
    ids[:, 0] = 2  # [CLS]
    return {"input_ids": ids, "attention_mask": mask,
            "token_type_ids": (torch.arange(width)[None] >= lengths[:, None] // 2).long() * mask,
            "labels": torch.randint(0, 2, (n,), generator=g)}


def loop_grads(model, names, batch, loss_fn, unpad: bool):
    """The reference: one ordinary backward pass per example (optionally without padding)."""
    params = dict(model.named_parameters())
    out = {n: [] for n in names}
    for row in range(batch["input_ids"].shape[0]):
        ex = {k: v[row] for k, v in batch.items()}
        if unpad:
            keep = ex["attention_mask"].bool()
            ex = {k: v[keep] if v.ndim == 1 else v for k, v in ex.items()}
        model.zero_grad(set_to_none=True)
        inputs = {k: ex[k][None] for k in ("input_ids", "attention_mask", "token_type_ids")}
        loss_fn(model(**inputs).logits, ex).backward()
        for n in names:
            out[n].append(params[n].grad.detach().clone())
    return {n: torch.stack(v) for n, v in out.items()}


# ----- per-example gradients and the Fisher ----------------------------------------------
@pytest.mark.parametrize("attention", ["eager", "sdpa"])
@pytest.mark.parametrize("unpad", [False, True], ids=["same-padding", "each-example-alone"])
def test_vectorised_per_example_grads_equal_single_example_backward(unpad, attention):
    model = tiny_bert(attn_implementation=attention).eval()
    names = [n for n, _ in model.named_parameters()]
    batch = padded_batch()
    loss_fn = fisher.task_loss(regression=False)
    vec = fisher.per_example_grads(model, names, batch, loss_fn)
    ref = loop_grads(model, names, batch, loss_fn, unpad)
    for n in names:
        scale = ref[n].abs().max().item() + 1e-12
        assert (vec[n] - ref[n]).abs().max().item() <= 1e-5 * max(scale, 1e-3), n


@pytest.mark.parametrize("how", ["vmap", "loop"])
def test_tensor_fisher_matches_numpy_mean_of_squared_gradients(how):
    model = tiny_bert(attn_implementation="eager").eval()
    names = [n for n, _ in model.base_model.named_parameters()]
    names = [f"bert.{n}" for n in names]
    batches = [padded_batch(seed=s) for s in (1, 2)]
    loss_fn = fisher.task_loss(regression=False)
    got, count = fisher.tensor_fisher(model, names, batches, loss_fn, how)
    assert count == 10
    grads = [loop_grads(model, names, b, loss_fn, unpad=True) for b in batches]
    expected = {}
    for n in names:
        g = np.concatenate([x[n].double().numpy() for x in grads])  # (examples, *shape)
        expected[n] = np.mean(np.mean(g ** 2, axis=0))  # F per element, then the tensor's mean
    # attention key biases have a true gradient of 0 (softmax ignores them): rounding noise
    floor = 1e-7 * max(expected.values())
    for n in names:
        assert got[n] == pytest.approx(expected[n], rel=1e-5, abs=floor), n


def test_mlm_per_example_grads_are_exact_and_masking_is_seeded():
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=V, hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32)).eval()

    class Tok:
        all_special_ids, mask_token_id = [0, 1, 2, 3, 4], 4

        def __len__(self):
            return V

    batch = padded_batch()
    masked = fisher.mask_tokens(batch, Tok(), torch.Generator().manual_seed(7))
    again = fisher.mask_tokens(batch, Tok(), torch.Generator().manual_seed(7))
    assert torch.equal(masked["input_ids"], again["input_ids"])
    chosen = masked["mlm_labels"] != -100
    assert chosen.any(1).all()  # every example has a masked token: its loss is defined
    assert not (chosen & (batch["attention_mask"] == 0)).any()  # never padding
    assert not (chosen & (batch["input_ids"] == 2)).any()  # never a special token
    names = [n for n, _ in model.named_parameters()]
    vec = fisher.per_example_grads(model, names, masked, fisher.mlm_loss)
    ref = loop_grads(model, names, masked, fisher.mlm_loss, unpad=False)
    for n in names:
        scale = max(ref[n].abs().max().item(), 1e-3)
        assert (vec[n] - ref[n]).abs().max().item() <= 1e-5 * scale, n


def test_tensor_fisher_of_a_tied_mlm_model_matches_single_example_backward():
    """The MLM decoder shares the word-embedding matrix: its per-example gradient is dense
    and must come from the full gradient, not from the looked-up rows alone."""
    from transformers import BertConfig, BertForMaskedLM

    torch.manual_seed(0)
    model = BertForMaskedLM(BertConfig(vocab_size=V, hidden_size=16, num_hidden_layers=1,
                                       num_attention_heads=2, intermediate_size=32)).eval()
    assert fisher._sparse_word_embeddings(model) is None
    batch = padded_batch()
    batch = {**batch, "mlm_labels": torch.where(batch["attention_mask"].bool(),
                                                batch["input_ids"], -100)}
    names = [n for n, _ in model.named_parameters()]
    got, _ = fisher.tensor_fisher(model, names, [batch], fisher.mlm_loss)
    ref = loop_grads(model, names, batch, fisher.mlm_loss, unpad=False)
    for n in names:
        expected = ref[n].double().pow(2).mean(0).mean().item()
        assert got[n] == pytest.approx(expected, rel=1e-4, abs=1e-12), n


# ----- sites -----------------------------------------------------------------------------
def test_sites_by_name_bert_and_distilbert():
    bert = find_sites(tiny_bert())
    assert [s.kind for s in bert] == ["embeddings"] + ["attention_probs", "attention_output",
                                                        "ffn_output"] * 2
    assert [s.layer for s in bert] == [0, 1, 1, 1, 2, 2, 2]
    assert bert[1].params == ("encoder.layer.0.attention.self.query.",
                              "encoder.layer.0.attention.self.key.",
                              "encoder.layer.0.attention.self.value.")
    distil = find_sites(tiny_distilbert())
    assert [s.module for s in distil] == [
        "embeddings.dropout", "transformer.layer.0.attention.dropout",
        "transformer.layer.0.ffn.dropout", "transformer.layer.1.attention.dropout",
        "transformer.layer.1.ffn.dropout"]


def test_an_unknown_dropout_module_is_refused_not_guessed():
    model = tiny_bert()
    model.bert.encoder.layer[0].extra_dropout = torch.nn.Dropout(0.1)
    with pytest.raises(ConfigError, match="extra_dropout"):
        find_sites(model)


def _forward_twice(model, batch):
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
    with torch.no_grad():
        return model(**inputs).logits, model(**inputs).logits


@pytest.mark.parametrize("masks", ["bernoulli", "uniform"])
@pytest.mark.parametrize("build", [tiny_bert, tiny_distilbert], ids=["bert", "distilbert"])
def test_every_site_rate_takes_effect_and_zero_is_deterministic(build, masks):
    """transformers' SDPA attention reads its own rate: setting a module's p must change the
    forward, and p = 0 everywhere must make train mode deterministic (with either mask
    draw: uniform replaces the modules and the attention function)."""
    model = build().train()
    draw_masks(model, masks)
    batch = padded_batch()
    for m in dropout_modules(model).values():
        m.p = 0.0
    a, b = _forward_twice(model, batch)
    assert torch.equal(a, b)
    for site in find_sites(model):
        module = dropout_modules(model.base_model)[site.module]
        module.p = 0.5
        torch.manual_seed(0)
        a, b = _forward_twice(model, batch)
        assert not torch.equal(a, b), site.module
        module.p = 0.0


# ----- uniform-draw masks (train.dropout_masks) ------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_uniform_masks_match_numpy_and_keep_one_minus_p(dtype):
    """Golden: keep where u >= p (u from torch.rand under the same seed), kept values times
    1 / (1 - p) rounded to the input's dtype (torch's dropout formula); the kept share is 1 - p."""
    p, x = 0.1, torch.randn(200_000).to(dtype)
    torch.manual_seed(3)
    u = torch.rand(x.shape).numpy()
    torch.manual_seed(3)
    y = uniform_dropout(x, p, training=True)
    keep = u >= p
    # the scale as torch's dropout forms it: the mask in the input's dtype divided by 1 - p
    scale = np.float32(torch.ones((), dtype=dtype).div_(1 - p).float().item())
    xf = x.float().numpy()
    exact = xf * keep * scale  # one product of two dtype values: exact in float32 for bf16
    expected = torch.from_numpy(exact).to(dtype).float().numpy()  # rounded as torch rounds
    assert np.array_equal(y.float().numpy(), expected)
    assert np.array_equal(y.float().numpy() == 0, ~keep | (xf == 0))
    assert keep.mean() == pytest.approx(1 - p, abs=3e-3)
    assert torch.equal(uniform_dropout(x, p, training=False), x)
    assert torch.equal(uniform_dropout(x, 0.0, training=True), x)
    assert torch.equal(uniform_dropout(x, 1.0, training=True), torch.zeros_like(x))


@pytest.mark.parametrize("build", [tiny_bert, tiny_distilbert], ids=["bert", "distilbert"])
def test_uniform_masks_evaluate_exactly_as_bernoulli_and_record_the_choice(build):
    model, base = build().eval(), build().eval()
    info = draw_masks(model, "uniform")
    assert info == {"masks": "uniform", "attention": "cmift_uniform_masks"}
    assert all(type(m).__name__ == "UniformMaskDropout" for m in dropout_modules(model).values())
    assert draw_masks(base, "bernoulli") == {}
    batch = padded_batch()
    assert torch.equal(_forward_twice(model, batch)[0], _forward_twice(base, batch)[0])
    model.train()
    a, b = _forward_twice(model, batch)
    assert not torch.equal(a, b)


def test_uniform_masks_name_the_run_and_its_teacher(fake_glue):
    plain = compose("model=tiny", f"data.glue_dir={fake_glue}")
    uniform = compose("model=tiny", "train.dropout_masks=uniform", f"data.glue_dir={fake_glue}")
    assert "dropout_masks" not in identity(plain)["train"]  # the legacy value: no run re-keyed
    assert identity(uniform)["train"]["dropout_masks"] == "uniform"
    kd = compose("objective=kd", "train.dropout_masks=uniform", f"data.glue_dir={fake_glue}")
    assert teacher_config(kd).train.dropout_masks.value == "uniform"


# ----- schedules -------------------------------------------------------------------------
def test_rank_schedule_reproduces_the_authors_37_rates():
    scores = {f"s{i}": float(i + 1) for i in range(37)}  # ascending
    rates = schedule_rates(scores, 0.099, 0.0, "rank")
    expected = [0.099 - i * 0.00275 for i in range(37)]  # their table: 0.099, 0.09625 ... 0
    assert [rates[f"s{i}"] for i in range(37)] == pytest.approx(expected, abs=1e-12)
    assert min(rates.values()) >= 0.0


def test_log_schedule_end_points_and_order():
    scores = {"a": 1e-8, "b": 1e-6, "c": 1e-4}
    rates = schedule_rates(scores, 0.1, 0.02, "log_score")
    assert rates == pytest.approx({"a": 0.1, "b": 0.06, "c": 0.02})
    flat = schedule_rates({"a": 1.0, "b": 2.0}, 0.0, 0.0, "rank")
    assert flat == {"a": 0.0, "b": 0.0}


# ----- Gaussian --------------------------------------------------------------------------
def test_gaussian_noise_moments_and_eval_identity():
    torch.manual_seed(0)
    x = torch.ones(400_000)
    y = gaussian_noise(x, 0.2, training=True)
    assert y.mean().item() == pytest.approx(1.0, abs=5e-3)
    assert y.var().item() == pytest.approx(0.2 / 0.8, rel=2e-2)
    assert torch.equal(gaussian_noise(x, 0.2, training=False), x)
    assert torch.equal(gaussian_dropout_class()(0.0).train()(x), x)


def test_gaussian_model_eval_matches_standard_and_noise_reaches_attention():
    from cmift.dropout import DropoutContext, apply_dropout

    cfg = compose("model=tiny", "dropout=gaussian")
    model, base = tiny_bert().eval(), tiny_bert().eval()
    info = apply_dropout(model, DropoutContext(cfg, cfg.model, None, None, None, "cpu"))
    assert set(info["rates"].values()) == {0.1} and info["attention"] == "cmift_gaussian"
    batch = padded_batch()
    assert torch.allclose(_forward_twice(model, batch)[0], _forward_twice(base, batch)[0],
                          atol=1e-5)
    model.train()
    for name, m in dropout_modules(model).items():
        m.p = 0.3 if name.endswith("attention.self.dropout") else 0.0
    a, b = _forward_twice(model, batch)
    assert not torch.equal(a, b)  # only the attention probabilities are noisy


# ----- config and identity ---------------------------------------------------------------
def test_standard_dropout_leaves_identity_untouched_and_guided_names_its_knobs(fake_glue):
    plain = identity(compose("model=tiny", f"data.glue_dir={fake_glue}"))
    assert "dropout" not in plain
    guided = identity(compose("model=tiny", "dropout=guided", f"data.glue_dir={fake_glue}"))
    assert guided["dropout"]["name"] == "guided"
    assert "chunk" not in guided["dropout"]["guided"]  # memory vs speed only
    assert "p_max" in guided["dropout"]["guided"]
    gauss = identity(compose("model=tiny", "dropout=gaussian", f"data.glue_dir={fake_glue}"))
    assert "guided" not in gauss["dropout"]


def test_students_share_the_teacher_whatever_their_dropout(fake_glue):
    keys = {d: config_hash(teacher_config(compose("objective=kd", f"dropout={d}",
                                                  f"data.glue_dir={fake_glue}")), "teacher")
            for d in ("standard", "guided", "none")}
    assert len(set(keys.values())) == 1


@pytest.mark.parametrize("args, message", [
    (["dropout.guided.p_min=0.2", "dropout=guided"], "dropout.guided.p_min=0.2 is not allowed"),
    (["dropout.guided.p_max=1.5", "dropout=guided"], "dropout.guided.p_max=1.5 is not allowed"),
])
def test_bad_rates_are_refused_by_validate(args, message):
    with pytest.raises(ConfigError, match=message):
        validate(compose("model=tiny", *args))


def test_mlm_source_refuses_a_checkpoint_without_an_mlm_head(tmp_path):
    tiny_bert().save_pretrained(tmp_path / "no_head")
    model_cfg = OmegaConf.create({"name": "nohead", "name_or_path": str(tmp_path / "no_head"),
                                  "trust_remote_code": False})
    with pytest.raises(ConfigError, match="no masked-LM head.*source=task"):
        fisher._fisher_model("mlm", model_cfg, None, V, 0)


def test_committed_run_records_keep_their_identities():
    """The dropout group (and any later knob) must not re-key the records under results/."""
    from cmift.config.schema import schema
    from tests.conftest import REAL_GLUE

    paths = sorted((REPO / "results").glob("**/metrics.json"))
    records = [(p.parent, json.loads(p.read_text())) for p in paths]
    records = [(d, r) for d, r in records if r.get("status") == "ok"]
    if not records or not (REAL_GLUE / "MRPC" / "train.tsv").is_file():
        pytest.skip("no committed records or no real GLUE data here")
    for run_dir, r in records:
        if run_dir.parent.parent.parent.parent.name == "teachers":
            # a teacher is composed from its student's config, not from overrides: rebuild it
            # from the config it saved (only the data folder is this machine's)
            saved = OmegaConf.load(run_dir / "config.yaml")
            saved.data.glue_dir = str(REAL_GLUE)
            cfg = OmegaConf.merge(OmegaConf.structured(schema()), saved)
        else:
            cfg = compose(*r["overrides"], f"data.glue_dir={REAL_GLUE}")
        assert config_hash(cfg) == r["config_hash"], r["run_dir"]


# ----- end to end ------------------------------------------------------------------------
def _cmift(*args, cwd):
    return run_cli([sys.executable, "-m", "cmift", *args], cwd=cwd, capture_output=True,
                          text=True)


def _record(out: Path, pattern: str) -> dict:
    return json.loads(next(out.glob(f"**/{pattern}*/metrics.json")).read_text())


def test_guided_runs_share_one_cached_fisher_and_record_their_rates(fake_glue, tmp_path):
    common = ["task=rte", "model=tiny", "train.max_steps=3", "data.max_eval_samples=20",
              "dropout=guided", "dropout.guided.samples=16", f"data.glue_dir={fake_glue}",
              f"output_dir={tmp_path / 'o'}", "train.save_model=false"]
    first = _cmift(*common, "seed=1", cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    second = _cmift(*common, "seed=2", cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    a, b = _record(tmp_path / "o", "seed=1"), _record(tmp_path / "o", "seed=2")
    assert a["dropout_setup"]["fisher"]["cache"] == "miss"
    assert b["dropout_setup"]["fisher"]["cache"] == "hit"
    assert a["dropout_setup"]["sites"] == b["dropout_setup"]["sites"]
    rates = [s["p"] for s in a["dropout_setup"]["sites"]]
    assert max(rates) == pytest.approx(0.099) and min(rates) == 0.0
    assert a["dropout_setup"]["rates"]["dropout"] == pytest.approx(0.1)  # the head keeps its rate
    assert all(math.isfinite(s["score"]) for s in a["dropout_setup"]["sites"])


def test_standard_touches_nothing_and_none_switches_every_module_off(fake_glue, tmp_path):
    common = ["task=mrpc", "model=tiny", "train.max_steps=4", f"data.glue_dir={fake_glue}",
              "train.save_model=false"]
    plain = _cmift(*common, f"output_dir={tmp_path / 'a'}", cwd=tmp_path)
    none = _cmift(*common, "dropout=none", f"output_dir={tmp_path / 'c'}", cwd=tmp_path)
    assert plain.returncode == none.returncode == 0, plain.stderr[-2000:] + none.stderr[-2000:]
    a, c = _record(tmp_path / "a", "seed="), _record(tmp_path / "c", "seed=")
    assert a["dropout"] == "standard" and set(a["dropout_setup"]["rates"].values()) == {0.1}
    assert "dropout" not in a["config"]  # the default stays out of the run's identity
    assert set(c["dropout_setup"]["rates"].values()) == {0.0}
    assert c["config_hash"] != a["config_hash"]
    assert a["evals"][-1]["dev"] != c["evals"][-1]["dev"]


@pytest.mark.parametrize("extra", [
    ["tuning=prefix"], ["mixture=uniform", "mixture.tasks=[rte,mrpc]"],
    ["mixture=uniform", "mixture.tasks=[rte,mrpc]", "dropout=gaussian"]],
    ids=["prefix", "mixture", "gaussian"])
def test_uniform_masks_and_gaussian_reach_peft_and_multitask_models(fake_glue, tmp_path, extra):
    """The attention function is set on the transformers model inside (a multi-task model's
    encoder); prefix tuning's longer keys meet SDPA's mask in the eager train-mode path."""
    r = _cmift("task=rte", "model=tiny", "train.max_steps=3", "data.max_eval_samples=20",
               "train.dropout_masks=uniform", *extra, f"data.glue_dir={fake_glue}",
               f"output_dir={tmp_path / 'o'}", "train.save_model=false", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    setup = _record(tmp_path / "o", "seed=")["dropout_setup"]
    gaussian = "dropout=gaussian" in extra  # its noise replaces every module: no masks drawn
    assert setup["attention"] == ("cmift_gaussian" if gaussian else "cmift_uniform_masks")
    assert setup.get("masks") == (None if gaussian else "uniform")


def test_unknown_dropout_method_is_one_line(tmp_path):
    r = _cmift("dropout=dropconnect", "model=tiny", cwd=tmp_path)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "dropconnect" in r.stderr and "guided" in r.stderr
