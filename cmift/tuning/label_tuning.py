"""`tuning=lt_prefix` and `tuning=lt_prompt`: label-token tuning (L-Tuning, arXiv 2402.01643).

Classification becomes pair scoring. The frozen encoder reads each class's label text
(`task.verbalizers`, padded with "." to one length l); a pooling layer W = Linear(d, 1) turns
those l hidden states into l numbers s_k (the authors' code; `pooling=softmax` normalises s_k
over the l positions, the paper's attention pooling), and a linear map of s_k gives

- lt_prefix: key/value prefixes of length l for every layer (the P-tuning v2 / peft layout:
  Linear(l, l x layers x 2 x d)), or
- lt_prompt: l input embeddings placed before the text's (Linear(l, l x d)).

The frozen encoder then reads the text x conditioned on label k, and a trained 2-way head on
its pooled output scores whether k is x's label. The model returned gives, for every example,
K logits z_k = head(x, k)[true] - head(x, k)[false], the pair log-odds: argmax over them is the
"labels" protocol (comparable with every other run), and every objective sees K class logits.
Each example is read K times (one batch of K x B pairs); the label side is encoded once,
because the encoder is frozen (eval mode, so no dropout on the label texts).

Training (`loss`): `pairs` is the authors' pair loss in expectation: their batches pair about
half the examples with their true label (target 1) and the rest with a random wrong label
(target 0); here every example meets every label, weighted 1/2 for its true pair and
1/(2(K-1)) for each wrong one: the same expected loss, without the sampling noise, at K
forward passes per example instead of 1. `labels` is cross-entropy over the K pair scores.
Evaluation reports both protocols: the task metric from the argmax over labels, and
`pair_accuracy` (the expected accuracy of the authors' half-true/half-wrong dev pairs).

Distillation: a label-tuned student's hard-label term is cross-entropy over its K pair scores;
the soft term compares them with the teacher's class logits as with any student.

Trainable: W (d + 1), the map ((l + 1) x its output), the head (2d + 2): 2.03 M for lt_prefix and
87 k for lt_prompt on BERT-base with l = 10, as the paper reports.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from cmift.config.spec import ConfigError, MethodSpec, choice, register, register_knobs
from cmift.lazy import F
from cmift.tuning import implements
from cmift.tuning.peft_methods import takes_past_key_values


class Pooling(str, Enum):
    linear = "linear"  # s = W h: the authors' code
    softmax = "softmax"  # s = softmax over the l positions of W h: the paper's attention pooling


class PairLoss(str, Enum):
    pairs = "pairs"  # binary pair loss, half true / half wrong in expectation (the authors')
    labels = "labels"  # cross-entropy over the K pair scores


@register_knobs("tuning.lt")
@dataclass
class LabelTuningKnobs:
    pooling: Pooling = Pooling.linear
    loss: PairLoss = PairLoss.pairs


def _check(cfg) -> None:
    from cmift.data.tasks import TASKS

    task = TASKS[cfg.task.name]
    if task.is_regression:
        raise ConfigError(f"tuning={cfg.tuning.name} is not allowed for task {task.name}: it "
                          "scores (text, label) pairs and the task is regression; use "
                          "tuning=full|prefix|prompt")
    texts = cfg.task.verbalizers
    if not texts or len(texts) != task.num_labels or not all(str(t).strip() for t in texts):
        raise ConfigError(f"task.verbalizers={list(texts) if texts else texts!r} is not allowed "
                          f"with tuning={cfg.tuning.name}: {task.num_labels} non-empty label "
                          f"texts for task {task.name}, one per class in label order")


register(*(MethodSpec("tuning", name, f"label-token {kind} tuning (L-Tuning) on a frozen encoder",
                      reads=("tuning.lt", "task.verbalizers"), regression=False, check=_check)
           for name, kind in (("lt_prefix", "prefix"), ("lt_prompt", "prompt"))))


def label_token_ids(tokenizer, texts) -> list[list[int]]:
    """The authors' label inputs: each text tokenised without special tokens, padded to the
    longest with the "." token, then the model's special tokens added ([CLS] ... [SEP])."""
    ids = [tokenizer(str(t), add_special_tokens=False)["input_ids"] for t in texts]
    dot = tokenizer.convert_tokens_to_ids(".")
    if dot is None or dot == tokenizer.unk_token_id:
        dot = tokenizer.pad_token_id
    longest = max(len(i) for i in ids)
    # the special tokens around a text, read off one encoding ([CLS] text [SEP] for BERT)
    text = ids[0]
    full = tokenizer(str(texts[0]))["input_ids"]
    at = next(i for i in range(len(full) - len(text) + 1) if full[i:i + len(text)] == text)
    before, after = full[:at], full[at + len(text):]
    return [before + i + [dot] * (longest - len(i)) + after for i in ids]


def pair_loss(logits, labels):
    """The authors' pair loss in expectation: 1/2 BCE(z_y, 1) + 1/2 mean_{k != y} BCE(z_k, 0),
    z the pair log-odds (a 2-way softmax's cross-entropy is the BCE of its log-odds)."""
    logits = logits.float()
    k = logits.shape[-1]
    target = F.one_hot(labels, k).float()
    bce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    weight = 0.5 * target + 0.5 / (k - 1) * (1 - target)
    return (bce * weight).sum(-1).mean()


def _build(kind: str):
    def apply(model, cfg, model_cfg, tokenizer=None):
        if tokenizer is None:
            raise ValueError("label-token tuning needs the run's tokenizer")
        if kind == "prefix" and not takes_past_key_values(model):
            raise ConfigError(f"tuning=lt_prefix is not allowed for model {model_cfg.name} "
                              f"({type(model).__name__}): its attention takes no past "
                              "key/values; use tuning=lt_prompt")
        from cmift.models.label_tuned import LabelTuned

        knobs = cfg.tuning.lt
        return LabelTuned(model, label_token_ids(tokenizer, cfg.task.verbalizers), kind,
                          choice(knobs.pooling), choice(knobs.loss))

    return apply


implements("lt_prefix")(_build("prefix"))
implements("lt_prompt")(_build("prompt"))
