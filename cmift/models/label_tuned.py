"""The label-token-tuned model (tuning=lt_prefix|lt_prompt; the method, its knobs and its
formulas: cmift/tuning/label_tuning.py): a frozen sequence classifier read once per label,
conditioned on that label's text, giving K pair log-odds per example."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from cmift.config.spec import ConfigError

CONFIG_FILE = "label_tuning.json"
WEIGHTS_FILE = "label_tuning.safetensors"


def head_linear(model, num_labels: int) -> tuple[object, str]:
    """(parent module, attribute) of the classifier's last Linear (BERT, DistilBERT: classifier;
    RoBERTa: classifier.out_proj)."""
    found = None
    for name, module in model.named_modules():
        if (isinstance(module, torch.nn.Linear) and module.out_features == num_labels
                and name.split(".")[0] in ("classifier", "score")):
            found = name
    if found is None:
        raise ConfigError(f"tuning=lt_* is not allowed for {type(model).__name__}: no classifier "
                          "head found")
    parent, _, attr = found.rpartition(".")
    return (model.get_submodule(parent) if parent else model), attr


class LabelTuned(torch.nn.Module):
    """A frozen sequence classifier read once per label, conditioned on that label's text."""

    pair_scoring = True  # its logits are pair log-odds (evaluation adds pair_accuracy)

    def __init__(self, model, label_ids: list[list[int]], kind: str, pooling: str, loss: str):
        super().__init__()
        from cmift.models.backbones import FeatureTap, cache_argument

        self.kind, self.pooling, self.loss = kind, pooling, loss
        self.cache_argument = cache_argument(model)  # how prefixes reach attention
        self.pair_loss = loss == "pairs"  # the objectives' data term is the pair loss
        self.label_ids = label_ids
        for p in model.parameters():
            p.requires_grad_(False)
        parent, attr = head_linear(model, model.config.num_labels)
        head = torch.nn.Linear(getattr(parent, attr).in_features, 2)
        model._init_weights(head)
        setattr(parent, attr, head)  # a fresh 2-way head: is k x's label?
        model.config.num_labels = 2
        self.model = model
        self.backbone = getattr(model, model.base_model_prefix)
        config = model.config
        d = model.get_input_embeddings().embedding_dim
        self.layers, self.heads = config.num_hidden_layers, config.num_attention_heads
        self.length = len(label_ids[0])
        with torch.no_grad():  # the label side: the frozen encoder, once, without dropout
            was = self.backbone.training
            self.backbone.eval()
            states = self.backbone(input_ids=torch.tensor(label_ids),
                                   attention_mask=torch.ones(len(label_ids), self.length,
                                                             dtype=torch.long)).last_hidden_state
            self.backbone.train(was)
        self.register_buffer("label_states", states.detach(), persistent=False)  # (K, l, d)
        self.pool = torch.nn.Linear(d, 1)
        width = self.layers * 2 * d if kind == "prefix" else d
        self.project = torch.nn.Linear(self.length, self.length * width)
        self.tap = FeatureTap(model)  # each pair's pooled feature
        self.pair_features = torch.nn.Identity()  # (B, K x d): what the K-way scorer reads

    def get_base_model(self):
        return self.model  # its forward says which inputs the model takes

    def signal(self):
        """s_k, (K, l): the pooled label states."""
        s = self.pool(self.label_states).squeeze(-1)
        return torch.softmax(s, -1) if self.pooling == "softmax" else s

    def forward(self, input_ids, attention_mask, token_type_ids=None):
        from transformers import DynamicCache
        from transformers.modeling_outputs import SequenceClassifierOutput

        generated = self.project(self.signal())  # (K, l x width)
        k, b, n = generated.shape[0], input_ids.shape[0], self.length
        ids, mask = input_ids.repeat(k, 1), attention_mask.repeat(k, 1)  # label-major rows
        ones = torch.ones(k * b, n, dtype=mask.dtype, device=mask.device)
        kwargs = {"attention_mask": torch.cat([ones, mask], 1)}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = token_type_ids.repeat(k, 1)
        per_row = generated.repeat_interleave(b, 0)  # (K x B, l x width)
        if self.kind == "prefix":
            # (KB, l, layers*2, heads, head_dim) -> layers*2 x (KB, heads, l, head_dim)
            kv = per_row.view(k * b, n, self.layers * 2, self.heads, -1).permute(2, 0, 3, 1, 4)
            kwargs[self.cache_argument] = DynamicCache([(kv[2 * i], kv[2 * i + 1])
                                                      for i in range(self.layers)])
            kwargs["input_ids"] = ids
        else:
            embeds = self.model.get_input_embeddings()(ids)
            prompt = per_row.view(k * b, n, -1).to(embeds.dtype)
            kwargs["inputs_embeds"] = torch.cat([prompt, embeds], 1)
            if "token_type_ids" in kwargs:
                kwargs["token_type_ids"] = torch.cat(
                    [torch.zeros_like(ones), kwargs["token_type_ids"]], 1)
        pair = self.model(**kwargs).logits  # (KB, 2)
        logits = (pair[:, 1] - pair[:, 0]).view(k, b).T  # (B, K) log-odds of "k is the label"
        feature = self.tap.value
        self.pair_features(feature.view(k, b, -1).transpose(0, 1).reshape(b, -1))
        return SequenceClassifierOutput(logits=logits)

    # ----- model/: the trained tensors and what is needed to rebuild the rest ----------------
    def save_pretrained(self, folder: str, **_) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        trained = {n: p.detach().contiguous().cpu() for n, p in self.named_parameters()
                   if p.requires_grad}
        save_file(trained, str(folder / WEIGHTS_FILE))
        (folder / CONFIG_FILE).write_text(json.dumps(
            {"kind": self.kind, "pooling": self.pooling, "loss": self.loss,
             "label_ids": self.label_ids, "base_model": self.model.config.name_or_path},
            indent=2))

    @classmethod
    def from_pretrained(cls, folder: str, base_model) -> "LabelTuned":
        """Onto a fresh copy of the base classifier (its pretrained weights)."""
        from safetensors.torch import load_file

        config = json.loads((Path(folder) / CONFIG_FILE).read_text())
        tuned = cls(base_model, config["label_ids"], config["kind"], config["pooling"],
                    config["loss"])
        saved = load_file(str(Path(folder) / WEIGHTS_FILE))
        trained = {n for n, p in tuned.named_parameters() if p.requires_grad}
        if trained != set(saved):
            raise ValueError(f"{folder}: tensors {sorted(trained ^ set(saved))[:3]} do not "
                             "match this model's trained ones")
        tuned.load_state_dict(saved, strict=False)
        return tuned
