"""Shared fixtures: a GLUE folder (the real one beside the checkout when present, else a small
generated one in the original layout), a private cache, and config composition."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
from forked import pin_threads
from forked import run as run_cli

# offline before any test module imports huggingface_hub (it reads these once, at import; a
# forked command inherits what this process read)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
REPO = Path(__file__).resolve().parent.parent
REAL_GLUE = Path(os.environ.get("CMIFT_TEST_GLUE", REPO.parent / "shared" / "glue"))
WORDS = ("the a court said company shares market year new police man people government "
         "report percent million billion on in at by for with from to of and was were is "
         "are has had will would can could said told added reported").split()


def _sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)) + " ."


def write_fake_mrpc(root: Path, n_train: int = 200, n_dev: int = 60, seed: int = 0) -> Path:
    """MRPC in the original layout (BOM, header, quality first); label 1 = near-copy pairs."""
    rng = random.Random(seed)
    folder = root / "MRPC"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("dev", n_dev)):
        lines = ["\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
        for i in range(n):
            a = _sentence(rng, rng.randint(5, 20))
            label = rng.random() < 0.6
            b = a if label else _sentence(rng, rng.randint(5, 20))
            lines.append(f"{int(label)}\t{i}\t{i + 100000}\t{a}\t{b}")
        (folder / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    test = ["index\t#1 ID\t#2 ID\t#1 String\t#2 String"] + [
        f"{i}\t{i}\t{i + 100000}\t{_sentence(rng, 8)}\t{_sentence(rng, 8)}" for i in range(30)]
    (folder / "test.tsv").write_text("\n".join(test) + "\n", encoding="utf-8")
    rte = root / "RTE"
    rte.mkdir(exist_ok=True)
    for name, n in (("train", n_train), ("dev", n_dev)):
        lines = ["index\tsentence1\tsentence2\tlabel"]
        for i in range(n):
            a, label = _sentence(rng, rng.randint(5, 20)), rng.random() < 0.5
            b = a[: len(a) // 2] if label else _sentence(rng, 6)
            lines.append(f"{i}\t{a}\t{b}\t{'entailment' if label else 'not_entailment'}")
        (rte / f"{name}.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return root


def pytest_configure(config):
    pin_threads()  # before any test module runs torch: commands can then run forked


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory) -> str:
    if all((REAL_GLUE / t / "train.tsv").is_file() for t in ("MRPC", "RTE")):
        return str(REAL_GLUE)
    return str(write_fake_mrpc(tmp_path_factory.mktemp("glue")))


@pytest.fixture(scope="session")
def fake_glue(tmp_path_factory) -> str:
    return str(write_fake_mrpc(tmp_path_factory.mktemp("fakeglue")))


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    os.environ["CMIFT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    os.environ.pop("GLUE_DIR", None)
    if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs one worker per core
        import torch

        torch.set_num_threads(1)
        os.environ["OMP_NUM_THREADS"] = "1"  # and the cmift subprocesses it starts


def compose(*overrides: str, return_hydra: bool = False):
    """The config `cmift <overrides>` would run, composed without starting a job."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cmift.cli import CONF_DIR  # registers the schema and resolvers

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides),
                             return_hydra_config=return_hydra)


def dev_evals(record: dict) -> str:
    """A run's dev evaluations as comparable text: NaN equals NaN (an undefined NCMI)."""
    import json

    return json.dumps([e["dev"] for e in record["evals"]], sort_keys=True)


def assert_same_logits(model, other) -> None:
    """Two classifiers (a reloaded model and the one trained) agree on a random batch."""
    import torch

    model.eval()
    other.eval()
    ids = torch.randint(5, 50, (3, 12))
    batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
             "token_type_ids": torch.zeros_like(ids)}
    with torch.no_grad():
        assert torch.allclose(model(**batch).logits, other(**batch).logits, atol=1e-6)


def cli(args: list[str], cwd):
    """`cmift <args> output_dir=<out>` in a new process (tests/forked.py), as a function of
    (out, faults): faults are CMIFT_FAULTS points (a kill at a known step, never after a
    sleep)."""
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}

    def cmift(out, faults: str = ""):
        return run_cli([sys.executable, "-m", "cmift", *args, f"output_dir={out}"],
                              env={**env, "CMIFT_FAULTS": faults}, capture_output=True,
                              text=True, timeout=600, cwd=cwd)

    return cmift
