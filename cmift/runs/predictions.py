"""predictions_<split>.tsv: dev predictions of the last evaluation, with class probabilities."""

from __future__ import annotations

from pathlib import Path

from cmift.runs.files import atomic_write


def write_predictions(run_dir: Path, task, predictions: dict) -> None:
    """One TSV per dev split: index, label, prediction (label names), p_<label> columns."""
    import pandas as pd

    for split, (idx, labels, preds, probs) in predictions.items():
        frame = pd.DataFrame({"index": idx, "label": labels, "prediction": preds})
        if not task.is_regression:
            names = list(task.labels)
            frame["label"] = [names[i] for i in labels]
            frame["prediction"] = [names[i] for i in preds]
            for k, name in enumerate(names):
                frame[f"p_{name}"] = probs[:, k].round(6)
        atomic_write(run_dir / f"predictions_{split}.tsv",
                     lambda f, frame=frame: frame.to_csv(f, sep="\t", index=False))
