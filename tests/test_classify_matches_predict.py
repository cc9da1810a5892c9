"""One image, one answer: ``nnunet_mtl_classify`` (``classify_files``), ``nnunet_mtl_predict`` (``predict_folder``)
and ``pipeline.py --inference_only`` give the same probabilities for the same image and model folder, for a model
trained with its heads and for one whose heads were fitted by ``nnunet_mtl_add_heads``."""
import csv
import glob
import os

import pytest

from nnunet_mtl import case_checks
from nnunet_mtl.case_checks import is_check_key
from nnunet_mtl.cli import pipeline
from nnunet_mtl.inference.folders import classify_files, predict_folder
from nnunet_mtl.inference.loader import load_predictor

pytestmark = pytest.mark.timeout(900)


def _probabilities(csv_path: str) -> dict:
    with open(csv_path) as f:
        return {r["case_id"]: {k: float(v) for k, v in r.items() if "_prob_" in k} for r in csv.DictReader(f)}


def _assert_one_answer(model: str, images: list, tmp_path) -> None:
    predictor = load_predictor(model, folds=[0], device="cpu", backend="torch")
    predicted = _probabilities(predict_folder(predictor, os.path.dirname(images[0]), str(tmp_path / "pred"),
                                              report=lambda _: None))
    assert pipeline.main(["--inference_only", "--model_dir", model, "--base_dir", str(tmp_path / "base"),
                          "--test_input", os.path.dirname(images[0]), "--test_output", str(tmp_path / "pipe"),
                          "--fold", "0", "--device", "cpu", "--backend", "torch"]) == 0
    assert _probabilities(str(tmp_path / "pipe" / "predictions.csv")) == predicted
    results = list(classify_files(load_predictor(model, folds=[0], device="cpu", backend="torch"), images,
                                  str(tmp_path / "cls")))
    assert len(results) == len(images) and all("error" not in r for r in results)
    with open(tmp_path / "pred" / "predictions.csv") as f:
        ood = {row["case_id"]: row.get("ood_score", "") for row in csv.DictReader(f)}
    for r in results:
        expected = predicted[r["case_id"]]
        got = {f"{name}_prob_{c}": float(p) for name, probs in r["outputs"].items() if not is_check_key(name)
               for c, p in zip(predictor.spec[name].classes, probs) if f"{name}_prob_{c}" in expected}
        score = case_checks.columns_of(r["outputs"]).get(case_checks.OOD_SCORE)  # the same input check
        assert (score is None) == (ood[r["case_id"]] == "")
        if score is not None:
            assert score == pytest.approx(float(ood[r["case_id"]]), abs=1e-3)
        assert got.keys() == expected.keys()
        for k, v in expected.items():
            assert got[k] == pytest.approx(v, abs=1e-6), (r["case_id"], k)


def _test_images(dataset) -> list:
    return sorted(glob.glob(os.path.join(dataset.raw_folder, "imagesTs", "*_0000.nii.gz")))


def test_one_answer_for_a_model_trained_with_its_heads(trained_2d, dataset_2d, tmp_path):
    _assert_one_answer(trained_2d, _test_images(dataset_2d), tmp_path)


def test_one_answer_for_a_model_with_fitted_heads(fitted_2d, dataset_2d, tmp_path):
    _assert_one_answer(fitted_2d, _test_images(dataset_2d), tmp_path)
