"""The benchmark report's plumbing: the GPU section survives a CPU re-run and is replaced by a
GPU run, leaving the rest of docs/PERFORMANCE.md alone."""

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "bench"))

from benchlib import replace_section  # noqa: E402
from gpu_bert_base import peak_tflops  # noqa: E402
from run_all import MEASUREMENTS, gpu_section, schedule  # noqa: E402

REPORT = "# cmift performance\n\n## Goals\n\ngoals\n\n## GPU\n\nold gpu\n\n## Later\n\nlater\n"


def test_gpu_run_replaces_only_its_section(tmp_path):
    path = tmp_path / "PERFORMANCE.md"
    path.write_text(REPORT)
    replace_section(path, "## GPU", "## GPU\n\nnew gpu\n")
    assert path.read_text() == REPORT.replace("old gpu", "new gpu")


def test_gpu_section_is_appended_when_missing(tmp_path):
    path = tmp_path / "PERFORMANCE.md"
    path.write_text("# cmift performance\n\n## Goals\n\ngoals\n")
    replace_section(path, "## GPU", "## GPU\n\nnew gpu\n")
    assert path.read_text().endswith("goals\n\n## GPU\n\nnew gpu\n")


def test_cpu_report_keeps_the_measured_gpu_section(tmp_path):
    path = tmp_path / "PERFORMANCE.md"
    path.write_text(REPORT)
    assert gpu_section(path) == "## GPU\n\nold gpu\n"
    assert "Not measured yet" in gpu_section(tmp_path / "missing.md")


def test_bf16_peaks_by_device_name():
    assert peak_tflops("NVIDIA H200") == 989.0
    assert peak_tflops("NVIDIA A100-SXM4-80GB") == 312.0
    assert peak_tflops("Tesla T4") is None


def test_paper_studies_in_gpu_hours_count_every_run():
    """ce 3 epochs, min_cmi 3 epochs + a third for its init pass (3 lam); the KD study's
    teachers (ce, max_cmi at 2 lam), a logit pass per teacher and 6 DistilBERT students; 3 seeds,
    90% of GLUE's 943,984 classification training examples."""
    from gpu_bert_base import study_hours

    examples = 0.9 * 943984
    (_, first), (_, second) = study_hours({"bert_base": 100.0, "distilbert": 200.0,
                                           "minilm_l6": 1.0})
    assert abs(first - (9 + 3 * 10) * examples / 100 / 3600) < 1e-9
    assert abs(second - ((9 + 2 * 10 + 3 * 1) / 100 + 6 * 9 / 200) * examples / 3600) < 1e-9


def test_bench_schedule_gives_min_cmi_more_paired_rounds():
    rounds = schedule(rounds=3, paired_rounds=5)
    assert len(rounds) == 5 and all(len(r) == len(MEASUREMENTS) for r in rounds[:3])
    names = [[m.name for m in r] for r in rounds[3:]]
    # rounds 4 and 5: only ce and min_cmi's two rows, still alternating
    assert names == [["cmift min_cmi, feature space", "cmift min_cmi, output space", "cmift ce"],
                     ["cmift ce", "cmift min_cmi, output space", "cmift min_cmi, feature space"]]
    assert [m.name for m in rounds[1]] == [m.name for m in MEASUREMENTS[::-1]]
    assert len(schedule(rounds=3, paired_rounds=2)) == 3  # never fewer than --rounds
