"""Distillation: golden values for kd / ttm / wttm against NumPy, students from teacher layers,
and the teacher stage trained once and reused."""

import json

import numpy as np
import pytest
import torch
from forked import run as run_cli

from cmift.config.spec import ConfigError
from cmift.config.validate import validate
from cmift.models.backbones import load_model
from cmift.models.students import keep_layers
from cmift.objectives.distill import kd_terms, ttm_terms, wttm_terms, wttm_weights
from cmift.training.run import run
from conftest import compose, dev_evals

RNG = np.random.default_rng(7)
Z = RNG.normal(0, 2, (6, 3))  # student logits
V = RNG.normal(0, 3, (6, 3))  # teacher logits
Y = np.array([0, 2, 1, 1, 0, 2])


def softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_ce(z, y):
    return float(np.mean(-np.log(softmax(z)[np.arange(len(y)), y])))


def np_kl_rows(p, q):
    return np.sum(p * (np.log(np.clip(p, 1e-8, None)) - np.log(q)), axis=1)


def t(a, dtype=torch.float32):
    return torch.tensor(a, dtype=dtype)


def test_kd_golden():
    T, alpha = 2.0, 0.3
    want = (1 - alpha) * np_ce(Z, Y) + alpha * T * T * np.mean(
        np_kl_rows(softmax(V / T), softmax(Z / T)))
    got = kd_terms(t(Z), t(V), t(Y, torch.long), T, alpha)["loss"].item()
    assert got == pytest.approx(want, rel=1e-5)


def test_ttm_golden():
    gamma, beta = 0.5, 2.0
    p = softmax(V)
    phat = p ** gamma / np.sum(p ** gamma, axis=1, keepdims=True)
    want = np_ce(Z, Y) + beta * np.mean(np_kl_rows(phat, softmax(Z)))
    got = ttm_terms(t(Z), t(V), t(Y, torch.long), gamma, beta)["loss"].item()
    assert got == pytest.approx(want, rel=1e-5)


def test_wttm_golden_and_weights_are_power_sums():
    gamma, beta = 0.5, 1.6
    p = softmax(V)
    u = np.sum(p ** gamma, axis=1)
    np.testing.assert_allclose(wttm_weights(t(V), gamma).numpy(), u, rtol=1e-6)
    phat = p ** gamma / u[:, None]
    want = np_ce(Z, Y) + beta * np.mean(u * np_kl_rows(phat, softmax(Z)))
    got = wttm_terms(t(Z), t(V), t(Y, torch.long), gamma, beta)["loss"].item()
    assert got == pytest.approx(want, rel=1e-5)


def test_ttm_with_gamma_one_is_ce_plus_kl_to_the_teacher():
    beta = 0.7
    want = np_ce(Z, Y) + beta * np.mean(np_kl_rows(softmax(V), softmax(Z)))
    got = ttm_terms(t(Z), t(V), t(Y, torch.long), 1.0, beta)["loss"].item()
    assert got == pytest.approx(want, rel=1e-5)


def test_kd_with_alpha_zero_is_ce():
    terms = kd_terms(t(Z), t(V), t(Y, torch.long), 4.0, 0.0)
    assert terms["loss"].item() == terms["ce"].item() == pytest.approx(np_ce(Z, Y), rel=1e-6)


def test_student_from_layers_copies_exactly_those_weights():
    cfg = compose("model=tiny", "model.tiny.layers=4")
    teacher = load_model(cfg.model, 2, False, vocab_size=60)
    student, layers = keep_layers(teacher, None)
    assert layers == [0, 2] and student.config.num_hidden_layers == 2
    assert len(student.bert.encoder.layer) == 2 and len(teacher.bert.encoder.layer) == 4
    for s_idx, t_idx in enumerate(layers):
        s_state = student.bert.encoder.layer[s_idx].state_dict()
        t_state = teacher.bert.encoder.layer[t_idx].state_dict()
        assert s_state.keys() == t_state.keys()
        assert all(torch.equal(s_state[k], t_state[k]) for k in s_state)
    assert torch.equal(student.bert.embeddings.word_embeddings.weight,
                       teacher.bert.embeddings.word_embeddings.weight)
    student.bert.embeddings.word_embeddings.weight.data.zero_()  # a copy, not shared storage
    assert teacher.bert.embeddings.word_embeddings.weight.abs().sum() > 0
    with pytest.raises(ConfigError, match="student_layers"):
        keep_layers(teacher, [0, 9])


@pytest.mark.parametrize("overrides, key", [
    (["objective=kd", "distillation=none"], "distillation"),
    (["objective=ce", "distillation=kd"], "distillation"),
    (["objective=kd", "task=stsb"], "objective"),
    (["objective=kd", "distillation.kd.temperature=0"], "distillation.kd.temperature"),
    (["objective=kd", "objective.name=foo"], "objective.name"),
])
def test_bad_distillation_configs_are_refused(overrides, key):
    with pytest.raises(ConfigError, match=f"^{key}="):
        validate(compose(*overrides))


def test_distillation_objectives_default_to_the_kd_loss():
    assert compose("objective=kd").distillation.name == "kd"
    assert compose("objective=max_cmi_kd", "distillation=wttm").distillation.name == "wttm"
    from cmift.config.spec import method

    assert method("objective", "max_cmi_kd").teacher == "max_cmi"
    assert method("objective", "kd").teacher == "ce"


def tiny_student(tmp_path, glue_dir, name, *overrides):
    """A tiny student run in tmp_path/name, its teachers under tmp_path/teachers."""
    cfg = compose("model=tiny", f"data.glue_dir={glue_dir}", "data.max_eval_samples=32",
                  f"output_dir={tmp_path}", *overrides)
    (tmp_path / name).mkdir()
    return run(cfg, tmp_path / name)


def test_teacher_trained_once_then_reused(glue_dir, tmp_path):
    def student(name, *overrides):
        return tiny_student(tmp_path, glue_dir, name, "objective=max_cmi_kd", "train.max_steps=6",
                            "data.max_train_samples=96", *overrides)

    first = student("a", "distillation=wttm")
    # the teacher's run set up logging again: transformers still reports errors only (no LOAD
    # REPORT of the student's new head on the console)
    import logging
    assert logging.getLogger("transformers").getEffectiveLevel() == logging.ERROR
    second = student("b", "distillation=kd", "distillation.kd.temperature=4")
    assert first["teacher"]["reused"] is False and second["teacher"]["reused"] is True
    assert first["teacher"]["key"] == second["teacher"]["key"]
    assert first["teacher"]["objective"] == "max_cmi"
    assert {"accuracy", "f1", "cmi"} <= set(second["teacher"]["dev"])
    assert second["student"] == "tiny-L0" and second["status"] == "ok"
    teachers = list((tmp_path / "teachers" / "mrpc" / "max_cmi" / "tiny").iterdir())
    assert len(teachers) == 1
    logits = np.load(teachers[0] / "train_logits.npy")
    assert logits.shape == (96, 2)
    assert "reused" in (tmp_path / "b" / "run.log").read_text()
    steps = [json.loads(x) for x in (tmp_path / "b" / "steps.jsonl").read_text().splitlines()]
    assert {"ce", "kd", "loss"} <= set(steps[0])
    # a named student model reuses the same teacher
    named = student("d", "distillation.student=tiny")
    assert named["student"] == "tiny" and named["status"] == "ok"
    assert named["teacher"]["reused"] is True
    # another seed is another teacher
    third = student("c", "seed=7")
    assert third["teacher"]["reused"] is False
    assert third["teacher"]["key"] != first["teacher"]["key"]


def test_a_teacher_without_its_weights_serves_cached_students_only(glue_dir, tmp_path):
    """A clone of the committed records holds each teacher's logits and records, not its
    weights: a cached student reuses that teacher (its records untouched); a live student,
    which runs the teacher's model, trains it again."""
    import shutil

    def student(name, *overrides):
        return tiny_student(tmp_path, glue_dir, name, "objective=kd", "train.max_steps=4",
                            "data.max_train_samples=64", *overrides)

    assert student("a")["teacher"]["reused"] is False
    [teacher] = [p.parent for p in (tmp_path / "teachers").rglob("metrics.json")]
    shutil.rmtree(teacher / "model")
    shutil.rmtree(teacher / "checkpoints", ignore_errors=True)
    before = {p.name: p.read_bytes() for p in teacher.iterdir() if p.is_file()}
    cached = student("b", "distillation.kd.temperature=4")
    assert cached["teacher"]["reused"] is True and cached["status"] == "ok"
    assert {p.name: p.read_bytes() for p in teacher.iterdir() if p.is_file()} == before
    live = student("c", "distillation.teacher_logits=live")
    assert live["teacher"]["reused"] is False and live["status"] == "ok"
    assert (teacher / "model").is_dir()


def test_live_teacher_matches_cached_logits(glue_dir, tmp_path):
    """teacher_logits=live runs the stored teacher on each batch; its logits equal the cached
    ones up to float noise from different padding, so the student's losses agree."""
    def student(name, mode):
        # a high lr, so the teacher's logits differ from example to example
        cfg = compose("model=tiny", "objective=kd", "train.max_steps=4", "train.lr=3e-3",
                      "distillation.kd.temperature=1", f"data.glue_dir={glue_dir}",
                      "data.max_train_samples=64",
                      "data.max_eval_samples=32", f"output_dir={tmp_path}",
                      f"distillation.teacher_logits={mode}")
        (tmp_path / name).mkdir()
        record = run(cfg, tmp_path / name)
        steps = [json.loads(x) for x in (tmp_path / name / "steps.jsonl").read_text().splitlines()]
        return record, steps

    cached, cached_steps = student("cached", "cached")
    live, live_steps = student("live", "live")
    assert live["teacher"]["reused"] is True and live["status"] == "ok"
    assert len(live_steps) == len(cached_steps) == 4
    assert cached_steps[0]["kd"] > 1e-3  # teacher and student differ: a wrong row shows
    for a, b in zip(cached_steps, live_steps):
        assert a["kd"] == pytest.approx(b["kd"], rel=1e-4)
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4)
    # a speed knob: the run's identity (and directory hash) does not change
    assert live["config_hash"] == cached["config_hash"]


def test_a_finished_ce_run_with_the_teachers_settings_is_the_kd_teacher(fake_glue, tmp_path):
    """No configuration trained twice in one tree: kd after ce (same settings) computes only
    the ce run's logits, and its student ends exactly as one whose teacher trained itself."""
    import os
    import sys

    common = ["task=mrpc", "model=tiny", "train.max_steps=6", "data.max_train_samples=96",
              "data.max_eval_samples=32", "train.lr=1e-3", f"data.glue_dir={fake_glue}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def cmift(out, *args):
        proc = run_cli([sys.executable, "-m", "cmift", *common, *args,
                               f"output_dir={out}"], env=env, capture_output=True, text=True,
                              timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    def record(root, objective):
        [path] = list((root / "mrpc" / objective).rglob("metrics.json"))
        return json.loads(path.read_text()), path.parent

    cmift(tmp_path / "tree", "objective=ce", "train.lr=5e-4")  # other settings: not a teacher
    cmift(tmp_path / "tree", "objective=ce", "train.eval_every=2")  # eval settings differ: fine
    ce_runs = [p.parent for p in (tmp_path / "tree" / "mrpc" / "ce").rglob("metrics.json")]
    [standalone] = [d for d in ce_runs if "eval_every" in d.name]
    cmift(tmp_path / "tree", "objective=kd")
    student, _ = record(tmp_path / "tree", "kd")
    assert student["teacher"]["run_dir"] == str(standalone)
    teacher_dirs = list((tmp_path / "tree" / "teachers").rglob("train_logits.npy"))
    assert len(teacher_dirs) == 1
    assert not (teacher_dirs[0].parent / "metrics.json").exists()  # nothing trained there
    # the same student in a tree without the ce run: its teacher trains under teachers/
    cmift(tmp_path / "fresh", "objective=kd")
    alone, _ = record(tmp_path / "fresh", "kd")
    assert alone["teacher"]["run_dir"] != student["teacher"]["run_dir"]
    assert dev_evals(alone) == dev_evals(student)
    assert np.array_equal(
        np.load(teacher_dirs[0]),
        np.load(next((tmp_path / "fresh" / "teachers").rglob("train_logits.npy"))))


def test_a_ce_run_after_its_kd_teacher_adopts_the_teachers_records(fake_glue, tmp_path):
    """The other direction: the kd student's teacher already computed `ce` with exactly these
    settings, so the ce run adopts its records instead of training it again."""
    import os
    import sys

    common = ["task=mrpc", "model=tiny", "train.max_steps=6", "data.max_train_samples=96",
              "data.max_eval_samples=32", "train.lr=1e-3", f"data.glue_dir={fake_glue}",
              f"output_dir={tmp_path}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def cmift(*args):
        proc = run_cli([sys.executable, "-m", "cmift", *common, *args], env=env,
                              capture_output=True, text=True, timeout=600, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return proc

    cmift("objective=kd")
    [teacher] = [p.parent for p in (tmp_path / "teachers").rglob("metrics.json")]
    proc = cmift("objective=ce")
    assert "nothing trained" in proc.stderr
    [path] = list((tmp_path / "mrpc" / "ce").rglob("metrics.json"))
    record = json.loads(path.read_text())
    source = json.loads((teacher / "metrics.json").read_text())
    assert record["adopted_from"] == str(teacher) and record["status"] == "ok"
    assert record["run_dir"] == str(path.parent) and dev_evals(record) == dev_evals(source)
    assert (path.parent / "model" / "model.safetensors").is_file()
    assert (path.parent / "steps.jsonl").read_text() == (teacher / "steps.jsonl").read_text()
    # other settings: trained as usual
    cmift("objective=ce", "train.lr=5e-4")
    records = [json.loads(p.read_text()) for p in (tmp_path / "mrpc" / "ce").rglob("metrics.json")]
    assert sorted("adopted_from" in r for r in records) == [False, True]
