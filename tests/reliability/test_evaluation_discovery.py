"""Discovery reads predictions only (issue 13, item 4): after a PNG inference the output folder
also holds the predictor's hidden ``.converted_inputs/CASE_0000.nii.gz`` copies, a lock file and,
with ``--explain``, ``explanations/``; none of them is a prediction. PNG and NIfTI masks are both
found, on either side."""
import os

import numpy as np
import pytest
from PIL import Image

from nnunet_mtl.cli import evaluate as cli
from nnunet_mtl.evaluation.discovery import find_masks, find_predicted_masks
from nnunet_mtl.evaluation.errors import EvaluationError
from tests.test_evaluation import pred_row, write_csv, write_mask

CASES = {"covidseg_004": 0.8, "covidseg_005": 0.3}


def disk(shift=0):
    a = np.zeros((16, 16), np.uint8)
    a[4:8, 4 + shift:8 + shift] = 1
    return a


def save_png(path, arr):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def png_inference(tmp_path):
    """GT PNG masks + the output folder of a PNG inference (2D NIfTI masks, as the predictor writes them)."""
    gt, out = tmp_path / "gt", tmp_path / "OUT"
    for c in CASES:
        save_png(str(gt / f"{c}.png"), disk())
        write_mask(str(out / f"{c}.nii.gz"), disk(shift=2)[None])  # (1, 16, 16): nnU-Net's 2D layout
        write_mask(str(out / ".converted_inputs" / f"{c}_0000.nii.gz"), np.full((1, 16, 16), 7))
        write_mask(str(out / "explanations" / f"{c}_cam.nii.gz"), np.ones((1, 16, 16)))
        save_png(str(out / "explanations" / f"{c}_overlay.png"), np.ones((16, 16), np.uint8))
    (out / ".predictions.lock").write_text("")
    save_png(str(gt / "._covidseg_004.png"), np.zeros((4, 4), np.uint8))  # a macOS resource-fork file
    write_csv(str(out / "predictions.csv"), [pred_row(c, p) for c, p in CASES.items()])
    write_csv(str(tmp_path / "labels.csv"), [{"case_id": c, "finding": "present"} for c in CASES])
    return tmp_path


def args(d, pred="OUT"):
    return ["--validation_data", str(d / "gt"), "--prediction_folder", str(d / pred), "--prediction_csv",
            str(d / pred / "predictions.csv"), "--labels_csv", str(d / "labels.csv"), "--output_folder",
            str(d / "eval"), "--n_bootstrap", "0", "--no_plots", "--regions", ""]


def test_png_inference_folder_evaluates(png_inference):
    res = cli.run(args(png_inference))
    assert res["n_cases"] == 2
    assert res["segmentation"]["labels"]["1"]["dsc"]["mean"] == pytest.approx(0.5)  # shifted by half its width
    assert list(res["segmentation"]["labels"]) == ["1"]  # the converted inputs' 7s were never read
    assert res["classification"]["finding"]["accuracy"] == 0.5


def test_nifti_ground_truth_with_png_predictions(png_inference):
    d = png_inference
    for c in CASES:
        os.remove(d / "gt" / f"{c}.png")
        write_mask(str(d / "gt" / f"{c}.nii.gz"), disk()[None])
        os.remove(d / "OUT" / f"{c}.nii.gz")
        save_png(str(d / "OUT" / f"{c}.png"), disk(shift=2))
    assert cli.run(args(d))["segmentation"]["labels"]["1"]["dsc"]["mean"] == pytest.approx(0.5)


def test_hidden_ground_truth_subfolder_is_skipped(png_inference):
    save_png(str(png_inference / "gt" / ".cache" / "stray.png"), disk())
    assert cli.run(args(png_inference))["n_cases"] == 2


def test_a_case_with_two_mask_files_in_one_folder_is_refused(png_inference, capsys):
    d = png_inference
    save_png(str(d / "OUT" / "covidseg_004.png"), disk())
    with pytest.raises(SystemExit) as e:
        cli.run(args(d))
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and len(err) == 1
    assert "'covidseg_004' has two mask files" in err[0] and "covidseg_004.png" in err[0]
    assert "covidseg_004.nii.gz" in err[0]
    os.remove(d / "OUT" / "covidseg_004.png")
    assert cli.run(args(d))["n_cases"] == 2


def test_predictions_only_in_subfolders_are_not_read(png_inference):
    d = png_inference
    os.makedirs(d / "nested")
    os.rename(d / "OUT", d / "nested" / "OUT")
    with pytest.raises(EvaluationError, match=r"nested: no mask files .* directly in it"):
        find_predicted_masks(str(d / "nested"))


def test_ground_truth_class_subfolders_still_found(tmp_path):
    save_png(str(tmp_path / "subtype0" / "a.png"), disk())
    save_png(str(tmp_path / "subtype1" / "b.png"), disk())
    save_png(str(tmp_path / ".converted_inputs" / "c_0000.png"), disk())
    paths, groups = find_masks(str(tmp_path))
    assert sorted(paths) == ["a", "b"] and groups == {"a": "subtype0", "b": "subtype1"}
