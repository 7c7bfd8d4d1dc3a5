"""The GLUE task registry and raw-data loading (original GLUE TSV layout, or the hub).

One table instead of branches: each task names its TSV files and columns, its label strings
(in the hub's label order, so both sources give the same label ids), and its metrics.
Loaded splits have the columns `idx`, `text_a`, `text_b` (pair tasks) and `label`.
"""

from __future__ import annotations

import csv
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

HUB_DATASET = "nyu-mll/glue"


@dataclass(frozen=True)
class Column:
    """Where a field lives in a GLUE TSV: a header name, or an index for header-less files."""

    name: Optional[str] = None
    index: Optional[int] = None


@dataclass(frozen=True)
class GlueTask:
    name: str
    folder: str  # <glue_dir>/<folder>/
    hub_config: str
    hub_text: tuple[str, ...]  # text columns in the hub dataset
    text: tuple[Column, ...]  # the same columns in the TSV files
    label: Column
    labels: Optional[tuple[str, ...]]  # TSV label strings, in label-id order; None = regression
    metrics: tuple[str, ...]  # reported metrics; the task score is their mean
    dev_splits: dict  # eval split name -> (TSV file stem, hub split)
    has_header: bool = True
    # unlabelled test splits: (split, TSV file stem, hub (config, split), GLUE submission file)
    test_splits: tuple = ()
    test_text: Optional[tuple[Column, ...]] = None  # when the test file names them otherwise
    test_index: str = "index"
    names: Optional[tuple[str, ...]] = None  # readable class names (the hub's) for 0/1 labels

    @property
    def label_names(self) -> Optional[tuple[str, ...]]:
        """What a saved model calls its classes (config.id2label): `equivalent`, not LABEL_1."""
        return self.names or self.labels

    @property
    def is_regression(self) -> bool:
        return self.labels is None

    @property
    def num_labels(self) -> int:
        return 1 if self.labels is None else len(self.labels)


def _c(name: str) -> Column:
    return Column(name=name)


_DEV = {"validation": ("dev", "validation")}


def _test(config: str, submission: str) -> tuple:
    return (("test", "test", (config, "test"), submission),)


TASKS: dict[str, GlueTask] = {
    t.name: t
    for t in [
        # CoLA's train and dev files have no header: source, label, original label, sentence.
        GlueTask("cola", "CoLA", "cola", ("sentence",), (Column(index=3),), Column(index=1),
                 ("0", "1"), ("matthews_correlation",), _DEV, has_header=False,
                 test_splits=_test("cola", "CoLA.tsv"), test_text=(_c("sentence"),),
                 names=("unacceptable", "acceptable")),
        GlueTask("sst2", "SST-2", "sst2", ("sentence",), (_c("sentence"),), _c("label"),
                 ("0", "1"), ("accuracy",), _DEV, test_splits=_test("sst2", "SST-2.tsv"),
                 names=("negative", "positive")),
        GlueTask("mrpc", "MRPC", "mrpc", ("sentence1", "sentence2"),
                 (_c("#1 String"), _c("#2 String")), _c("Quality"), ("0", "1"),
                 ("accuracy", "f1"), _DEV, test_splits=_test("mrpc", "MRPC.tsv"),
                 names=("not_equivalent", "equivalent")),
        GlueTask("qqp", "QQP", "qqp", ("question1", "question2"),
                 (_c("question1"), _c("question2")), _c("is_duplicate"), ("0", "1"),
                 ("accuracy", "f1"), _DEV, test_splits=_test("qqp", "QQP.tsv"), test_index="id",
                 names=("not_duplicate", "duplicate")),
        GlueTask("mnli", "MNLI", "mnli", ("premise", "hypothesis"),
                 (_c("sentence1"), _c("sentence2")), _c("gold_label"),
                 ("entailment", "neutral", "contradiction"), ("accuracy",),
                 {"validation_matched": ("dev_matched", "validation_matched"),
                  "validation_mismatched": ("dev_mismatched", "validation_mismatched")},
                 # AX, GLUE's diagnostic set, is predicted by the MNLI model
                 test_splits=(("test_matched", "test_matched", ("mnli", "test_matched"),
                               "MNLI-m.tsv"),
                              ("test_mismatched", "test_mismatched",
                               ("mnli", "test_mismatched"), "MNLI-mm.tsv"),
                              ("ax", "../diagnostic/diagnostic", ("ax", "test"), "AX.tsv"))),
        GlueTask("qnli", "QNLI", "qnli", ("question", "sentence"),
                 (_c("question"), _c("sentence")), _c("label"),
                 ("entailment", "not_entailment"), ("accuracy",), _DEV,
                 test_splits=_test("qnli", "QNLI.tsv")),
        GlueTask("rte", "RTE", "rte", ("sentence1", "sentence2"),
                 (_c("sentence1"), _c("sentence2")), _c("label"),
                 ("entailment", "not_entailment"), ("accuracy",), _DEV,
                 test_splits=_test("rte", "RTE.tsv")),
        GlueTask("wnli", "WNLI", "wnli", ("sentence1", "sentence2"),
                 (_c("sentence1"), _c("sentence2")), _c("label"), ("0", "1"),
                 ("accuracy",), _DEV, test_splits=_test("wnli", "WNLI.tsv"),
                 names=("not_entailment", "entailment")),
        GlueTask("stsb", "STS-B", "stsb", ("sentence1", "sentence2"),
                 (_c("sentence1"), _c("sentence2")), _c("score"), None,
                 ("pearson", "spearmanr"), _DEV, test_splits=_test("stsb", "STS-B.tsv")),
    ]
}


class DataError(ValueError):
    """Missing or malformed data: reported as one line, exit code 2."""


def split_suffix(task: GlueTask, split: str) -> str:
    """Metric-name suffix of an eval split: '' for the single dev set, '_m' / '_mm' for MNLI."""
    if len(task.dev_splits) == 1:
        return ""
    return "_mm" if split.endswith("mismatched") else "_m"


def task_files(task: GlueTask, glue_dir: str) -> dict[str, Path]:
    folder = Path(glue_dir).expanduser() / task.folder
    files = {"train": folder / "train.tsv"}
    files.update({split: folder / f"{stem}.tsv" for split, (stem, _) in task.dev_splits.items()})
    missing = [p for p in files.values() if not p.is_file()]
    if missing:
        expected = ", ".join(p.name for p in files.values())
        raise DataError(f"GLUE task {task.name}: missing {', '.join(map(str, missing))} "
                        f"(expected {expected} in {folder})")
    return files


def _column_index(col: Column, header: Optional[list[str]], path: Path) -> int:
    if col.index is not None:
        return col.index
    if header is None or col.name not in header:
        raise DataError(f"{path}: no column {col.name!r} in header {header}")
    return header.index(col.name)


def read_tsv(task: GlueTask, path: Path, skip_bad: bool = False,
             skipped: Optional[list] = None) -> dict[str, list]:
    """Read one GLUE TSV into columns. Quoting is off (GLUE text holds bare quotes).
    A malformed row raises DataError naming file and line, or with `skip_bad` is left out and
    its line number appended to `skipped`."""
    csv.field_size_limit(sys.maxsize)
    with open(path, encoding="utf-8-sig", newline="") as f:  # utf-8-sig: MRPC starts with a BOM
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, []) if task.has_header else None
        text_idx = [_column_index(c, header, path) for c in task.text]
        label_idx = _column_index(task.label, header, path)
        label_ids = {s: i for i, s in enumerate(task.labels or ())}
        width = max([*text_idx, label_idx]) + 1
        out: dict[str, list] = {"idx": [], "label": [], "text_a": []}
        if len(text_idx) == 2:
            out["text_b"] = []
        first_line = 2 if task.has_header else 1
        for n, row in enumerate(rows):
            line = first_line + n
            try:
                label = _parse_row(task, row, width, label_idx, label_ids)
            except DataError as e:
                if not skip_bad:
                    raise DataError(f"{path}:{line}: {e} (data.skip_bad_rows=true skips such "
                                    "rows)") from None
                if skipped is not None:
                    skipped.append(line)
                continue
            out["idx"].append(n)
            out["label"].append(label)
            out["text_a"].append(row[text_idx[0]])
            if len(text_idx) == 2:
                out["text_b"].append(row[text_idx[1]])
    return out


def _parse_row(task: GlueTask, row: list[str], width: int, label_idx: int, label_ids: dict):
    """The row's label id (or score); DataError when the row is malformed."""
    if len(row) < width:
        raise DataError(f"{len(row)} columns, expected at least {width}")
    raw = row[label_idx].strip()
    if task.is_regression:
        try:
            return float(raw)
        except ValueError:
            raise DataError(f"label {raw!r} is not a number") from None
    if raw not in label_ids:
        raise DataError(f"label {raw!r} is not one of {list(label_ids)}")
    return label_ids[raw]


@lru_cache(maxsize=None)  # per process; size and mtime in the key catch an edited file
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            h.update(block)
    return h.hexdigest()[:16]


def data_fingerprint(task_name: str, glue_dir: Optional[str]) -> dict:
    """What identifies a task's data, for run identities and cache keys: a hash of each file's
    content (so another copy of the same files is the same data, and an edited or reordered
    file is not), or the hub dataset's name. Missing files are named, not raised: the run
    then fails on loading, with the usual one-line error."""
    task = TASKS.get(task_name)
    if task is None:
        return {}
    if glue_dir is None:
        return {"hub": HUB_DATASET, "config": task.hub_config}
    try:
        files = task_files(task, glue_dir)
    except DataError as e:
        return {"error": str(e)}
    out = {}
    for split, p in files.items():
        stat = p.stat()
        out[split] = _file_digest(str(p.resolve()), stat.st_size, stat.st_mtime_ns)
    return out


def load_raw(task: GlueTask, glue_dir: Optional[str], skip_bad_rows: bool = False,
             skipped: Optional[dict] = None):
    """Train and dev splits as a `datasets.DatasetDict`: idx, text_a, [text_b], label.
    With `skip_bad_rows`, `skipped` receives {split: [line numbers left out]}."""
    from datasets import Dataset, DatasetDict

    if glue_dir is None:
        return _load_hub(task)
    splits = {}
    for split, path in task_files(task, glue_dir).items():
        lines: list[int] = []
        try:
            columns = read_tsv(task, path, skip_bad_rows, lines)
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 text (byte {e.object[e.start]:#04x} at offset "
                            f"{e.start}); GLUE files are UTF-8") from None
        if not columns["label"]:
            raise DataError(f"{path}: no data rows (an empty or header-only file); expected "
                            f"the GLUE {task.name.upper()} layout")
        splits[split] = Dataset.from_dict(columns)
        if skipped is not None and lines:
            skipped[split] = lines
    return DatasetDict(splits)


def load_test(task: GlueTask, glue_dir: Optional[str]):
    """The task's unlabelled test splits that exist, as a `datasets.DatasetDict` (idx, text_a,
    [text_b], label = -1): from `<glue_dir>/<folder>/test.tsv` (GLUE's layout: a header with an
    `index` column), or the hub's test splits. Missing files are left out (GLUE_DIR copies
    often lack them)."""
    from datasets import Dataset, DatasetDict

    out = {}
    for split, stem, (config, hub_split), _ in task.test_splits:
        if glue_dir is None:
            from datasets import load_dataset

            try:
                d = load_dataset(HUB_DATASET, config, split=hub_split)
            except Exception:  # offline or absent: no test predictions, as for a missing file
                continue
            out[split] = _hub_columns(task, d)
            continue
        path = (Path(glue_dir).expanduser() / task.folder / f"{stem}.tsv").resolve()
        if path.is_file():
            out[split] = Dataset.from_dict(_read_test_tsv(task, path))
    return DatasetDict(out)


def _read_test_tsv(task: GlueTask, path: Path) -> dict[str, list]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, [])
        # (AX, MNLI's diagnostic set, has MNLI's sentence1 / sentence2 columns)
        text_idx = [_column_index(c, header, path) for c in task.test_text or task.text]
        index = _column_index(_c(task.test_index), header, path)
        out: dict[str, list] = {"idx": [], "text_a": [], "label": []}
        if len(text_idx) > 1:
            out["text_b"] = []
        for line, row in enumerate(rows, start=2):
            if not row:
                continue
            if len(row) <= max(text_idx + [index]):
                raise DataError(f"{path}:{line}: {len(row)} columns, expected at least "
                                f"{max(text_idx + [index]) + 1}")
            out["idx"].append(int(row[index]))
            for name, i in zip(("text_a", "text_b"), text_idx):
                out[name].append(row[i])
            out["label"].append(-1)
    if not out["idx"]:
        raise DataError(f"{path}: no data rows (an empty or header-only file)")
    return out


def _load_hub(task: GlueTask):
    from datasets import DatasetDict, load_dataset

    try:
        ds = load_dataset(HUB_DATASET, task.hub_config)
    except Exception as e:  # offline, no such config, ...: one clear line instead of a trace
        raise DataError(f"could not load {HUB_DATASET}/{task.hub_config} from the hub "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); "
                        "set data.glue_dir or $GLUE_DIR to a local GLUE folder") from None
    wanted = {"train": "train", **{s: hub for s, (_, hub) in task.dev_splits.items()}}
    return DatasetDict({split: _hub_columns(task, ds[hub]) for split, hub in wanted.items()})


def _hub_columns(task: GlueTask, split):
    """A hub split with cmift's columns: idx, text_a, [text_b], label."""
    names = dict(zip(task.hub_text, ("text_a", "text_b")))
    return split.rename_columns(names).select_columns(["idx", *names.values(), "label"])
