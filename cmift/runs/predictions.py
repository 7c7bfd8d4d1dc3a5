"""predictions_<split>.tsv: dev predictions of the last evaluation, with class probabilities."""

from __future__ import annotations

from pathlib import Path

from cmift.runs.files import atomic_write


def write_test_predictions(run_dir: Path, task, split: str, idx, logits) -> Path:
    """predictions_<test split>.tsv: `index<TAB>prediction` with GLUE's label strings (a score
    for STS-B), the leaderboard's format; cmift-submit gathers these files."""
    import pandas as pd

    if task.is_regression:
        preds = [f"{x:.3f}" for x in logits[:, 0].clip(0, 5)]
    else:
        preds = [task.labels[i] for i in logits.argmax(-1)]
    path = run_dir / f"predictions_{split}.tsv"
    frame = pd.DataFrame({"index": idx, "prediction": preds})
    atomic_write(path, lambda f: frame.to_csv(f, sep="\t", index=False))
    return path


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
