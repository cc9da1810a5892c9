"""Heads on a frozen stock model: nnunet_mtl_add_heads (fit per fold, out-of-fold validation) and its predict."""
import csv
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mtl.cli import add_heads
from tests.test_frozen import stock_model  # noqa: F401  (fixture: a tiny stock nnUNetTrainer, fold 0)

pytestmark = pytest.mark.timeout(300)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def labels_csv(dataset_2d, tmp_path_factory):
    cases = dataset_2d.dataset_json["mtl"]["cases"]
    path = str(tmp_path_factory.mktemp("labels") / "labels.csv")
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "finding"])
        for cid in sorted(cases):
            w.writerow([cid, cases[cid]["finding"]])
    return path


@pytest.fixture(scope="module")
def heads(stock_model, labels_csv, dataset_2d, tmp_path_factory):  # noqa: F811
    out = str(tmp_path_factory.mktemp("heads") / "finding_heads")
    assert add_heads.main(["-m", stock_model, "--labels_csv", labels_csv, "-o", out, "-device", "cpu"]) == 0
    return out


def test_fit_writes_out_of_fold_predictions_and_probes(heads, dataset_2d):
    with open(os.path.join(dataset_2d.preprocessed_folder, "splits_final.json")) as f:
        val_ids = sorted(json.load(f)[0]["val"])
    rows = _rows(os.path.join(heads, "fold_0", "validation", "predictions.csv"))
    assert [r["case_id"] for r in rows] == val_ids
    with open(os.path.join(heads, "fold_0", "validation", "mtl_summary.json")) as f:
        summary = json.load(f)
    assert summary["targets"]["finding"]["n"] == len(val_ids) and "macro_f1" in summary["targets"]["finding"]
    assert summary["frozen_features"]["computed"] == len(val_ids) + summary["n_train"]
    with open(os.path.join(heads, "frozen_heads.json")) as f:
        info = json.load(f)
    assert info["folds"] == [0] and info["sklearn_version"] and os.path.isfile(
        os.path.join(heads, "fold_0", "probe.pkl"))


def test_second_head_reuses_the_feature_cache(heads, stock_model, labels_csv, tmp_path):  # noqa: F811
    out = str(tmp_path / "again")
    from nnunet_mtl import workflow
    summary = workflow.add_frozen_heads(None, stock_model, out, labels_csv, device="cpu",
                                        cache_dir=os.path.join(heads, "feature_cache"), pools=("global",))
    stats = summary["folds"]["0"]["frozen_features"]
    assert stats["computed"] == 0 and stats["forwards"] == 0 and stats["cached"] > 0   # no sliding window


def test_predict_gives_stock_masks_and_a_row_per_case(heads, stock_model, dataset_2d, tmp_path):  # noqa: F811
    images = os.path.join(dataset_2d.raw_folder, "imagesTs")
    ids = sorted({f[:-len("_0000.nii.gz")] for f in os.listdir(images)})
    out = str(tmp_path / "pred")
    argv = ["predict", "-m", heads, "-i", images, "-o", out, "-device", "cpu", "-npp", "0"]
    assert add_heads.main(argv) == 0
    rows = _rows(os.path.join(out, "predictions.csv"))
    assert [r["case_id"] for r in rows] == ids
    assert all(abs(sum(float(v) for k, v in r.items() if "_prob_" in k) - 1) < 1e-6 for r in rows)

    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    stock = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, device=torch.device("cpu"),
                            perform_everything_on_device=False, allow_tqdm=False)   # nnUNetv2_predict's defaults
    stock.initialize_from_trained_model_folder(stock_model, (0,), "checkpoint_final.pth")
    stock_out = str(tmp_path / "stock")
    os.makedirs(stock_out)
    stock.predict_from_files_sequential(images, stock_out)   # nnUNetv2_predict's computation, without workers
    for cid in ids:
        ours = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, cid + ".nii.gz")))
        theirs = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(stock_out, cid + ".nii.gz")))
        np.testing.assert_array_equal(ours, theirs)


def test_errors_are_one_line_naming_the_folder(tmp_path, capsys):
    assert add_heads.main(["-m", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "no plans.json" in capsys.readouterr().err
    assert add_heads.main(["predict", "-m", str(tmp_path), "-i", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "not a frozen-heads folder" in capsys.readouterr().err
