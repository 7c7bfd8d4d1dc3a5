import numpy as np
import pytest
import torch

from cmift.data import tokenized as data_mod
from cmift.data.tasks import TASKS, load_raw
from cmift.data.tokenized import PadCollator, Split, eval_batches, load_tokenized, train_batches
from cmift.models.backbones import build_tiny_tokenizer
from conftest import compose


@pytest.fixture()
def tiny_tokenizer(fake_glue, tmp_path):
    cfg = compose("model=tiny")
    raw = load_raw(TASKS["mrpc"], fake_glue)
    texts = [*raw["train"]["text_a"], *raw["train"]["text_b"]]
    return build_tiny_tokenizer(cfg.model, lambda: texts, tmp_path, "fake")


def test_tiny_tokenizer_numbers_its_vocabulary_the_same_every_time(glue_dir, tmp_path):
    """The WordPiece trainer numbers tokens in hash-map order; cmift renumbers them, so tiny
    runs are reproducible across processes and machines."""
    raw = load_raw(TASKS["mrpc"], glue_dir)
    texts = [*raw["train"]["text_a"], *raw["train"]["text_b"]]
    vocabs = [build_tiny_tokenizer(compose("model=tiny").model, lambda: texts, tmp_path / n,
                                   "k").get_vocab() for n in ("a", "b", "c")]
    assert vocabs[0] == vocabs[1] == vocabs[2]
    assert [vocabs[0][t] for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")] == [0, 1, 2,
                                                                                    3, 4]


def test_tokenization_is_cached_and_reused(fake_glue, tiny_tokenizer, tmp_path, monkeypatch):
    cfg = compose("model=tiny", f"data.glue_dir={fake_glue}", f"data.cache_dir={tmp_path}",
                  "data.max_seq_length=32")
    calls = []
    real = data_mod.tokenize_splits
    monkeypatch.setattr(data_mod, "tokenize_splits", lambda *a: calls.append(1) or real(*a))
    first, _ = load_tokenized(TASKS["mrpc"], cfg.data, tiny_tokenizer)
    second, _ = load_tokenized(TASKS["mrpc"], cfg.data, tiny_tokenizer)
    assert calls == [1]  # the second load came from disk
    assert first["train"]["input_ids"][:5] == second["train"]["input_ids"][:5]
    assert max(len(x) for x in first["train"]["input_ids"]) <= 32
    # a different max length is a different cache entry
    cfg.data.max_seq_length = 16
    load_tokenized(TASKS["mrpc"], cfg.data, tiny_tokenizer)
    assert calls == [1, 1]


def test_sample_limits_take_the_first_examples(fake_glue, tiny_tokenizer, tmp_path):
    cfg = compose("model=tiny", f"data.glue_dir={fake_glue}", f"data.cache_dir={tmp_path}",
                  "data.max_train_samples=10", "data.max_eval_samples=7")
    ds, _ = load_tokenized(TASKS["mrpc"], cfg.data, tiny_tokenizer)
    assert len(ds["train"]) == 10 and len(ds["validation"]) == 7
    assert list(ds["train"]["idx"]) == list(range(10))


def test_pair_encoding_has_segments(tiny_tokenizer):
    enc = tiny_tokenizer("the court said", "the market")
    assert enc["input_ids"][0] == tiny_tokenizer.cls_token_id
    assert enc["input_ids"].count(tiny_tokenizer.sep_token_id) == 2
    assert set(enc["token_type_ids"]) == {0, 1}


def test_dynamic_padding_pads_to_longest_in_batch():
    split = Split(input_ids=[np.array([5, 6, 7]), np.array([5]), np.array([5, 6])],
                  token_type_ids=None, labels=np.array([1, 0, 1]), idx=np.arange(3))
    batch = PadCollator(split, pad_id=0, regression=False)([1, 2])
    assert batch["input_ids"].tolist() == [[5, 0], [5, 6]]
    assert batch["attention_mask"].tolist() == [[1, 0], [1, 1]]
    assert batch["labels"].dtype == torch.long and batch["labels"].tolist() == [0, 1]


def test_batches_are_seeded_and_cover_every_example():
    lengths = np.arange(10)
    a = train_batches(lengths, 4, torch.Generator().manual_seed(1))
    b = train_batches(lengths, 4, torch.Generator().manual_seed(1))
    assert a == b and [len(x) for x in a] == [4, 4, 2]
    assert sorted(sum(a, [])) == list(range(10))


def test_ungrouped_batches_are_randperm_cut_in_order():
    """group_by_length=false keeps the data order of earlier versions: randperm, cut."""
    order = torch.randperm(70, generator=torch.Generator().manual_seed(3)).tolist()
    got = train_batches(np.ones(70, dtype=int), 32, torch.Generator().manual_seed(3), False)
    assert got == [order[:32], order[32:64], order[64:]]


def test_length_grouped_batches_pad_less_and_stay_random():
    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 120, size=5000)
    padded = lambda bs: sum(lengths[b].max() * len(b) for b in bs)  # noqa: E731
    plain = train_batches(lengths, 32, torch.Generator().manual_seed(1), False)
    grouped = train_batches(lengths, 32, torch.Generator().manual_seed(1), True)
    again = train_batches(lengths, 32, torch.Generator().manual_seed(1), True)
    assert grouped == again  # seeded
    assert sorted(sum(grouped, [])) == list(range(5000))  # each example once per epoch
    assert sorted(map(len, grouped)) == sorted(map(len, plain))
    assert padded(grouped) < 0.7 * padded(plain)  # lengths 10..120: ~1.6x less padding
    spans = [lengths[b].max() - lengths[b].min() for b in grouped]
    assert np.median(spans) <= 5
    # the batch order is shuffled, not longest-to-shortest
    maxima = [lengths[b].max() for b in grouped]
    assert maxima != sorted(maxima) and maxima != sorted(maxima, reverse=True)
    other = train_batches(lengths, 32, torch.Generator().manual_seed(2), True)
    assert other != grouped


def test_eval_batches_sort_by_length():
    split = Split(input_ids=[np.zeros(n) for n in (5, 1, 3)], token_type_ids=None,
                  labels=np.zeros(3), idx=np.arange(3))
    assert eval_batches(split.lengths, 2) == [[1, 2], [0]]


def test_pad_collator_matches_transformers_data_collator_with_padding(tmp_path):
    import numpy as np
    import torch
    from datasets import Dataset
    from transformers import BertTokenizerFast, DataCollatorWithPadding

    from cmift.data.tokenized import PadCollator, Split

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "d"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizerFast(str(tmp_path / "vocab.txt"))
    pairs = [("a b c", "d"), ("a", "b c d a b"), ("c", "c")]
    encoded = [tokenizer(x, y) for x, y in pairs]
    data = Dataset.from_dict({"input_ids": [e["input_ids"] for e in encoded],
                              "token_type_ids": [e["token_type_ids"] for e in encoded],
                              "label": [1, 0, 1], "idx": [0, 1, 2]})
    ours = PadCollator(Split.from_dataset(data), tokenizer.pad_token_id, False)([0, 1, 2])
    theirs = DataCollatorWithPadding(tokenizer, return_tensors="pt")(
        [{**e, "labels": label} for e, label in zip(encoded, [1, 0, 1])])
    for key in ("input_ids", "attention_mask", "token_type_ids", "labels"):
        assert torch.equal(ours[key], theirs[key]), key
    assert np.array_equal(ours["index"].numpy(), [0, 1, 2])
