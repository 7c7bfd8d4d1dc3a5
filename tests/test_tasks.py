import pytest

from cmift.data.tasks import TASKS, DataError, load_raw, read_tsv, task_files
from conftest import REAL_GLUE

# Official GLUE row counts (train, dev) for the folders shipped beside the checkout.
COUNTS = {"cola": (8551, 1043), "sst2": (67349, 872), "mrpc": (3668, 408), "rte": (2490, 277),
          "wnli": (635, 71), "stsb": (5749, 1500)}


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_real_glue_tsv_rows_and_labels(name):
    task = TASKS[name]
    if not (REAL_GLUE / task.folder / "train.tsv").is_file():
        pytest.skip("real GLUE data not present")
    files = task_files(task, str(REAL_GLUE))
    train, dev = read_tsv(task, files["train"]), read_tsv(task, files["validation"])
    assert (len(train["label"]), len(dev["label"])) == COUNTS[name]
    if task.is_regression:
        assert 0.0 <= min(train["label"]) and max(train["label"]) <= 5.0
    else:
        assert set(train["label"]) == set(range(task.num_labels))
    assert all(isinstance(t, str) and t for t in train["text_a"])
    assert ("text_b" in train) == (len(task.text) == 2)


def test_rte_labels_follow_hub_order():
    task = TASKS["rte"]
    if not (REAL_GLUE / "RTE" / "dev.tsv").is_file():
        pytest.skip("real GLUE data not present")
    dev = read_tsv(task, REAL_GLUE / "RTE" / "dev.tsv")
    assert dev["label"][0] == 1  # first dev row is not_entailment; the hub's ClassLabel id is 1
    assert sum(dev["label"]) == 131


def test_mnli_has_matched_and_mismatched_dev():
    assert set(TASKS["mnli"].dev_splits) == {"validation_matched", "validation_mismatched"}


def test_generated_mrpc_loads_as_datasets(fake_glue):
    raw = load_raw(TASKS["mrpc"], fake_glue)
    assert set(raw) == {"train", "validation"}
    assert raw["train"].column_names == ["idx", "label", "text_a", "text_b"]
    assert len(raw["train"]) == 200 and len(raw["validation"]) == 60


def test_missing_folder_names_path_and_expected_files(tmp_path):
    with pytest.raises(DataError, match=r"RTE.*expected train\.tsv, dev\.tsv"):
        task_files(TASKS["rte"], str(tmp_path))


def test_bad_label_reports_file_and_line(tmp_path):
    folder = tmp_path / "RTE"
    folder.mkdir()
    (folder / "train.tsv").write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n"
                                      "1\ta\tb\tmaybe\n")
    with pytest.raises(DataError, match=r"train\.tsv:3: label 'maybe'"):
        read_tsv(TASKS["rte"], folder / "train.tsv")
