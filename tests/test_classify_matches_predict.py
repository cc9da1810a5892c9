"""One image, one answer: ``nnunet_mtl_classify`` (``classify_files``) gives the probabilities that
``nnunet_mtl_predict`` (``predict_folder``) writes to predictions.csv for the same image and model,
for one of our models and for a frozen-heads folder."""
import csv
import glob
import os

import pytest

from nnunet_mtl.inference.folders import classify_files, load_predictor, predict_folder
from tests.test_add_heads import heads, labels_csv  # noqa: F401  (fixtures)
from tests.test_frozen import stock_model  # noqa: F401  (fixture)

pytestmark = pytest.mark.timeout(900)


def _probabilities(row: dict) -> dict:
    return {k: float(v) for k, v in row.items() if "_prob_" in k}


def _assert_classify_equals_predict(model: str, images: list, tmp_path) -> None:
    predictor = load_predictor(model, folds=[0], device="cpu")
    out = str(tmp_path / "pred")
    csv_path = predict_folder(predictor, os.path.dirname(images[0]), out, report=lambda _: None)
    with open(csv_path) as f:
        rows = {r["case_id"]: _probabilities(r) for r in csv.DictReader(f)}
    results = list(classify_files(load_predictor(model, folds=[0], device="cpu"), images, str(tmp_path / "cls")))
    assert len(results) == len(images) and all("error" not in r for r in results)
    for r in results:
        expected = rows[r["case_id"]]
        got = {f"{name}_prob_{c}": float(p) for name, probs in r["outputs"].items()
               for c, p in zip(predictor.spec[name].classes, probs) if f"{name}_prob_{c}" in expected}
        assert got.keys() == expected.keys()
        for k, v in expected.items():
            assert got[k] == pytest.approx(v, abs=1e-5), (r["case_id"], k)


def _test_images(dataset) -> list:
    return sorted(glob.glob(os.path.join(dataset.raw_folder, "imagesTs", "*_0000.nii.gz")))


def test_classify_equals_predict_for_an_mtl_model(trained_2d, dataset_2d, tmp_path):
    _assert_classify_equals_predict(trained_2d, _test_images(dataset_2d), tmp_path)


def test_classify_equals_predict_for_a_heads_folder(heads, dataset_2d, tmp_path):  # noqa: F811
    _assert_classify_equals_predict(heads, _test_images(dataset_2d), tmp_path)
