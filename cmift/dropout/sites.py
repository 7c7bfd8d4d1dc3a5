"""Dropout sites: each dropout module of an encoder, and the parameters whose output it drops.

Found by module name, never by position, for the BERT family (BERT, MiniLM, and encoders with
BERT's module names such as RoBERTa and ELECTRA) and DistilBERT. A site is the dropout module
that follows a sub-layer; its parameters are that sub-layer's (arXiv 2406.14005):

  BERT                                          parameters
  embeddings.dropout                            embeddings.*
  encoder.layer.i.attention.self.dropout        attention q, k, v  (attention probabilities)
  encoder.layer.i.attention.output.dropout      attention output dense + LayerNorm
  encoder.layer.i.output.dropout                FFN output dense + LayerNorm
  DistilBERT
  embeddings.dropout                            embeddings.*
  transformer.layer.i.attention.dropout         q_lin, k_lin, v_lin (attention probabilities)
  transformer.layer.i.ffn.dropout               ffn.lin2 + output_layer_norm

DistilBERT has no dropout after its attention output (out_lin + sa_layer_norm): those
parameters drive no site. The FFN's intermediate projection has no dropout in either. Names are
relative to the backbone (`model.base_model`), so the same sites serve the sequence classifier
and the masked-LM model the Fisher is measured on. The classifier head's dropout is not a site.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cmift.config.spec import ConfigError


@dataclass(frozen=True)
class Site:
    module: str  # the dropout module's name in the backbone
    kind: str  # embeddings | attention_probs | attention_output | ffn_output
    layer: int  # 0 for the embeddings, i + 1 for transformer layer i
    params: tuple[str, ...]  # parameter-name prefixes of the sub-layer it follows


# (dropout module pattern, kind, parameter prefixes; {i} is the layer number)
_RULES = (
    (r"embeddings\.dropout", "embeddings", ("embeddings.",)),
    (r"encoder\.layer\.(\d+)\.attention\.self\.dropout", "attention_probs",
     ("encoder.layer.{i}.attention.self.query.", "encoder.layer.{i}.attention.self.key.",
      "encoder.layer.{i}.attention.self.value.")),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dropout", "attention_output",
     ("encoder.layer.{i}.attention.output.dense.",
      "encoder.layer.{i}.attention.output.LayerNorm.")),
    (r"encoder\.layer\.(\d+)\.output\.dropout", "ffn_output",
     ("encoder.layer.{i}.output.dense.", "encoder.layer.{i}.output.LayerNorm.")),
    (r"transformer\.layer\.(\d+)\.attention\.dropout", "attention_probs",
     ("transformer.layer.{i}.attention.q_lin.", "transformer.layer.{i}.attention.k_lin.",
      "transformer.layer.{i}.attention.v_lin.")),
    (r"transformer\.layer\.(\d+)\.ffn\.dropout", "ffn_output",
     ("transformer.layer.{i}.ffn.lin2.", "transformer.layer.{i}.output_layer_norm.")),
)


def dropout_modules(module) -> dict:
    """name -> every torch Dropout module under `module`."""
    import torch

    return {name: m for name, m in module.named_modules()
            if isinstance(m, torch.nn.modules.dropout._DropoutNd)}


def find_sites(model) -> list[Site]:
    """The dropout sites of `model`'s backbone; ConfigError when a dropout module is unknown
    (a guessed mapping would set the wrong rates silently)."""
    base = model.base_model
    params = [name for name, _ in base.named_parameters()]
    sites = []
    for name in dropout_modules(base):
        for pattern, kind, prefixes in _RULES:
            match = re.fullmatch(pattern, name)
            if match:
                layer = int(match.group(1)) if match.groups() else -1
                owned = tuple(p.format(i=layer) for p in prefixes)
                if not any(n.startswith(owned) for n in params):
                    raise ConfigError(f"dropout site {name} of {type(model).__name__}: none of "
                                      f"its parameters {owned} exist")
                sites.append(Site(name, kind, layer + 1, owned))
                break
        else:
            raise ConfigError(f"dropout=guided is not allowed for {type(model).__name__}: its "
                              f"dropout module {name!r} is not a known site (supported: BERT, "
                              "MiniLM, DistilBERT and encoders with BERT's module names)")
    if not sites:
        raise ConfigError(f"dropout=guided is not allowed for {type(model).__name__}: it has "
                          "no dropout modules")
    return sites


def site_scores(sites: list[Site], tensor_fisher: dict[str, float]) -> dict[str, float]:
    """Each site's score: the unweighted mean over its tensors of each tensor's mean Fisher."""
    scores = {}
    for site in sites:
        values = [v for name, v in tensor_fisher.items() if name.startswith(site.params)]
        if not values:
            raise ConfigError(f"dropout site {site.module}: the Fisher has none of its "
                              f"parameters {site.params}")
        scores[site.module] = sum(values) / len(values)
    return scores
