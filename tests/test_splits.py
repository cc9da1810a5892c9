"""split_tools: stratified, grouped, fixed and held-out-test splits written as nnU-Net's splits_final.json."""
import json
import os
from collections import Counter

import pytest

from nnunet_mtl.conversion.detect import convert
from nnunet_mtl.synthetic import write_pancreas_layout
from split_tools.__main__ import main as cli_main
from split_tools.splits import SplitError, fold_class_counts, make_splits, read_splits, write_splits
from nnunet_mtl.dataset_spec import DatasetSpec

CLASSES = ["common", "middle", "rare"]


def write_dataset_json(folder, n=36, with_patients=False, classes_counts=(18, 12, 6)):
    """A dataset.json with only what splitting reads: the mtl block (imbalanced classes, patients)."""
    os.makedirs(folder, exist_ok=True)
    labels = [c for c, k in zip(CLASSES, classes_counts) for _ in range(k)][:n]
    cases = {f"c{i:03d}": {"kind": labels[i]} for i in range(len(labels))}
    mtl = {"targets": [{"name": "kind", "kind": "classification", "classes": CLASSES}], "cases": cases}
    if with_patients:  # 1, 2, 3, 4, 1, 2, ... images per patient
        mtl["patients"], ids = {}, sorted(cases)
        pid = 0
        while ids:
            take, ids = ids[:1 + pid % 4], ids[1 + pid % 4:]
            mtl["patients"].update({c: f"p{pid:02d}" for c in take})
            pid += 1
    path = os.path.join(folder, "dataset.json")
    with open(path, "w") as f:
        json.dump({"name": "T", "labels": {"background": 0, "x": 1}, "mtl": mtl}, f)
    return path


def _check_partition(splits, all_cases):
    vals = [c for f in splits for c in f["val"]]
    assert sorted(vals) == sorted(all_cases)  # every case validated exactly once
    for f in splits:
        assert not set(f["train"]) & set(f["val"])
        assert sorted(f["train"] + f["val"]) == sorted(all_cases)


def test_stratified_keeps_class_proportions(tmp_path):
    dj = write_dataset_json(str(tmp_path / "d"))
    splits = make_splits(dj, "stratified", n_folds=3, seed=0)
    table = DatasetSpec.from_dataset_json(json.load(open(dj))).table
    _check_partition(splits, table.case_ids)
    overall = table.class_counts("kind")
    for row in fold_class_counts(splits, table, "kind"):
        n_val = sum(row["val"])
        for k, total in enumerate(overall):
            assert abs(row["val"][k] - total * n_val / len(table.case_ids)) <= 1


def test_grouped_never_splits_a_patient(tmp_path):
    dj = write_dataset_json(str(tmp_path / "d"), n=36, with_patients=True)
    patients = json.load(open(dj))["mtl"]["patients"]
    assert len(set(patients.values())) < len(patients)  # several images per patient
    splits = make_splits(dj, "grouped", n_folds=3, seed=1)
    _check_partition(splits, list(patients))
    for f in splits:
        assert not {patients[c] for c in f["train"]} & {patients[c] for c in f["val"]}


def test_grouped_without_patients_is_refused(tmp_path):
    dj = write_dataset_json(str(tmp_path / "d"))
    with pytest.raises(SplitError, match="patient"):
        make_splits(dj, "grouped", n_folds=3)


def test_fixed_validation_equals_layout_validation(tmp_path):
    layout = write_pancreas_layout(str(tmp_path / "pancreas"), n_train=6, n_val=3, n_test=0, shape=(8, 16, 16))
    folder = convert(layout, str(tmp_path / "raw"), 601, "Pan")
    val_cases = sorted(f[:-len("_0000.nii.gz")] for d in os.listdir(os.path.join(layout, "validation"))
                       for f in os.listdir(os.path.join(layout, "validation", d)) if f.endswith("_0000.nii.gz"))
    splits = make_splits(folder, "fixed")  # a folder works too (raw or preprocessed)
    assert len(splits) == 1
    assert splits[0]["val"] == val_cases
    assert len(splits[0]["train"]) == 6 and not set(splits[0]["train"]) & set(val_cases)


def test_fixed_without_validation_cases_is_refused(tmp_path):
    with pytest.raises(SplitError, match="fixed_validation"):
        make_splits(write_dataset_json(str(tmp_path / "d")), "fixed")


def test_deterministic_with_seed(tmp_path):
    dj = write_dataset_json(str(tmp_path / "d"))
    assert make_splits(dj, "stratified", 4, seed=7) == make_splits(dj, "stratified", 4, seed=7)
    assert make_splits(dj, "stratified", 4, seed=7) != make_splits(dj, "stratified", 4, seed=8)
    dj2 = write_dataset_json(str(tmp_path / "g"), with_patients=True)
    assert make_splits(dj2, "grouped", 3, seed=3) == make_splits(dj2, "grouped", 3, seed=3)


def test_held_out_test_set(tmp_path):
    dj = write_dataset_json(str(tmp_path / "d"))
    splits = make_splits(dj, "stratified", n_folds=3, seed=0, test_fraction=0.25)
    counts = Counter(json.load(open(dj))["mtl"]["cases"][c]["kind"] for c in splits.test)
    assert counts == {"common": 4, "middle": 3, "rare": 2}  # about a quarter of each class (rounded)
    for f in splits:
        assert not set(splits.test) & (set(f["train"]) | set(f["val"]))
    out = write_splits(splits, str(tmp_path / "pre"))
    assert json.load(open(os.path.join(tmp_path, "pre", "splits_test.json")))["test"] == splits.test
    assert read_splits(out) == [dict(f) for f in splits]


def test_write_format_and_overwrite_rules(tmp_path):
    dj = write_dataset_json(str(tmp_path / "d"))
    splits = make_splits(dj, "stratified", n_folds=5, seed=0)
    path = write_splits(splits, str(tmp_path / "pre"))
    assert path.endswith("splits_final.json")
    data = json.load(open(path))
    assert isinstance(data, list) and len(data) == 5
    assert all(set(f) == {"train", "val"} and all(isinstance(c, str) for c in f["train"] + f["val"]) for f in data)
    stamp = os.path.getmtime(path)
    write_splits(splits, path)  # identical content: left alone
    assert os.path.getmtime(path) == stamp
    other = make_splits(dj, "stratified", n_folds=5, seed=1)
    with pytest.raises(SplitError, match="splits_final.json"):
        write_splits(other, path)
    write_splits(other, path, overwrite=True)
    assert json.load(open(path)) == [dict(f) for f in other]


def test_nnunet_can_load_splits(tmp_path):
    from batchgenerators.utilities.file_and_folder_operations import load_json
    dj = write_dataset_json(str(tmp_path / "d"))
    path = write_splits(make_splits(dj, "random", n_folds=3, seed=0), str(tmp_path / "pre"))
    folds = load_json(path)  # what nnUNetTrainer.do_split uses
    assert folds[0]["train"] and folds[0]["val"]


def test_cli(tmp_path, capsys):
    dj = write_dataset_json(str(tmp_path / "d"))
    out = str(tmp_path / "pre")
    assert cli_main(["--dataset_json", dj, "--out", out, "--mode", "stratified", "--folds", "3",
                     "--target", "kind", "--seed", "0"]) == 0
    printed = capsys.readouterr().out
    assert "rare" in printed and "wrote 3 fold(s)" in printed
    assert len(read_splits(out)) == 3
    assert cli_main(["--dataset_json", dj, "--out", out, "--folds", "3", "--seed", "1"]) == 2  # refuses
    assert "already exists" in capsys.readouterr().err
    assert cli_main(["--dataset_json", dj, "--out", out, "--target", "nope"]) == 2


def test_too_many_folds_is_refused(tmp_path):
    dj = write_dataset_json(str(tmp_path / "d"), n=4)
    with pytest.raises(SplitError, match="folds"):
        make_splits(dj, "random", n_folds=5)
