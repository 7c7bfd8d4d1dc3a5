"""One shared encoder, one head per task: the model of a multi-task run (mixture != none).

Each task keeps an ordinary transformers sequence classifier (its own head, sized for its labels
or a regression output); all of them hold the same encoder module, so the encoder's parameters
exist once and every task's batches train them. `forward(..., task=k)` runs task k's classifier.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn


class MultiTaskModel(nn.Module):
    def __init__(self, models: dict[str, nn.Module]):
        super().__init__()
        names = list(models)
        first = models[names[0]]
        prefix = first.base_model_prefix  # "bert", "distilbert", ...
        shared = getattr(first, prefix)
        for name in names[1:]:
            setattr(models[name], prefix, shared)
        self.task_models = nn.ModuleDict(models)
        self.names = names
        self.active = names[0]  # the task of the last forward (the feature tap reads it)
        params = inspect.signature(first.forward).parameters
        self.inputs = tuple(k for k in ("input_ids", "attention_mask", "token_type_ids")
                            if k in params)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, task=None):
        """Task `task`'s (an index into `names`; a 0-d or 1-d tensor) classifier on the batch."""
        self.active = self.names[int(task.reshape(-1)[0]) if torch.is_tensor(task) else task]
        given = {"input_ids": input_ids, "attention_mask": attention_mask,
                 "token_type_ids": token_type_ids}
        return self.task_models[self.active](**{k: given[k] for k in self.inputs
                                                if given[k] is not None})

    def save(self, folder, tokenizer, label_names: dict) -> None:
        """model/<task>/ for every task: a standalone classifier (the shared encoder and that
        task's head), loadable with from_pretrained; its config names the task's classes."""
        for name, model in self.task_models.items():
            if label_names.get(name):
                model.config.id2label = dict(enumerate(label_names[name]))
                model.config.label2id = {v: i for i, v in enumerate(label_names[name])}
            model.save_pretrained(str(folder / name), safe_serialization=True)
            tokenizer.save_pretrained(str(folder / name))
