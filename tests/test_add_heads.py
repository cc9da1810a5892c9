"""Heads on a frozen stock model: nnunet_mtl_add_heads (fit per fold, out-of-fold validation) and its predict."""
import csv
import json
import os

import shutil

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mtl.cli import add_heads, predict
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


def _test_ids(dataset_2d):
    images = os.path.join(dataset_2d.raw_folder, "imagesTs")
    return images, sorted({f[:-len("_0000.nii.gz")] for f in os.listdir(images)})


def _predict(argv, capsys):
    """nnunet_mtl_predict; returns its exit code and the 'N predicted, M kept, K removed' line."""
    code = predict.main(argv + ["-device", "cpu", "-npp", "1", "-nps", "1"])
    out = capsys.readouterr().out
    return code, next((line for line in out.splitlines() if " predicted, " in line), "")


def _stock_masks(stock_model, images, out):  # noqa: F811
    """What nnUNetv2_predict writes with its defaults (mirroring, step 0.5, every trained fold), without workers."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    stock = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, device=torch.device("cpu"),
                            perform_everything_on_device=False, allow_tqdm=False)
    stock.initialize_from_trained_model_folder(stock_model, None, "checkpoint_final.pth")
    os.makedirs(out)
    stock.predict_from_files_sequential(images, out)
    return out


def _mask(folder, cid):
    return sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, cid + ".nii.gz")))


@pytest.fixture(scope="module")
def heads_prediction(heads, dataset_2d, tmp_path_factory):
    """nnunet_mtl_predict -m HEADS on the test images (first run)."""
    images, _ = _test_ids(dataset_2d)
    out = str(tmp_path_factory.mktemp("heads_pred") / "pred")
    assert predict.main(["-m", heads, "-i", images, "-o", out, "-device", "cpu", "-npp", "1", "-nps", "1"]) == 0
    return out


def test_predict_with_heads_gives_stock_masks_and_a_row_per_case(heads_prediction, stock_model,  # noqa: F811
                                                                 dataset_2d, tmp_path):
    images, ids = _test_ids(dataset_2d)
    rows = _rows(os.path.join(heads_prediction, "predictions.csv"))
    assert [r["case_id"] for r in rows] == ids
    assert all(abs(sum(float(v) for k, v in r.items() if "_prob_" in k) - 1) < 1e-6 for r in rows)
    stock_out = _stock_masks(stock_model, images, str(tmp_path / "stock"))
    for cid in ids:
        np.testing.assert_array_equal(_mask(heads_prediction, cid), _mask(stock_out, cid))


def test_predicted_rows_equal_the_out_of_fold_rows_of_the_same_cases(heads, dataset_2d, tmp_path):
    """Prediction pools the features the probes were fitted on: a validation case predicted from its raw
    image gets the probabilities of its out-of-fold validation row, whether its features come from the
    mask pass itself (no mirroring, as the heads were fitted) or from a pass of their own (mirrored masks)."""
    from nnunet_mtl.inference.folders import load_predictor, predict_folder
    val_rows = {r["case_id"]: r for r in _rows(os.path.join(heads, "fold_0", "validation", "predictions.csv"))}
    images = tmp_path / "val_images"
    images.mkdir()
    for cid in val_rows:
        os.symlink(os.path.join(dataset_2d.raw_folder, "imagesTr", cid + "_0000.nii.gz"),
                   images / (cid + "_0000.nii.gz"))
    for mirroring, feature_passes in ((False, 0), (True, len(val_rows))):
        predictor = load_predictor(heads, use_mirroring=mirroring)
        out = str(tmp_path / f"pred_{mirroring}")
        csv_path = predict_folder(predictor, str(images), out, num_processes_preprocessing=1, num_processes_export=1)
        assert predictor.stats["feature_passes"] == feature_passes
        rows = _rows(csv_path)
        assert sorted(r["case_id"] for r in rows) == sorted(val_rows)
        for row in rows:
            probs = {k: float(v) for k, v in row.items() if "_prob_" in k}
            assert probs and all(abs(p - float(val_rows[row["case_id"]][k])) < 1e-5 for k, p in probs.items())


def test_rerun_keeps_rows_and_refitted_heads_predict_again(heads, stock_model, labels_csv, dataset_2d,  # noqa: F811
                                                           tmp_path, capsys):
    images, ids = _test_ids(dataset_2d)
    mine = str(tmp_path / "heads")
    shutil.copytree(heads, mine)
    out = str(tmp_path / "pred")
    argv = ["-m", mine, "-i", images, "-o", out]
    assert _predict(argv, capsys) == (0, f"{out}: {len(ids)} predicted, 0 kept, 0 removed")
    first = _rows(os.path.join(out, "predictions.csv"))
    code, line = _predict(argv, capsys)
    assert (code, line) == (0, f"{out}: 0 predicted, {len(ids)} kept, 0 removed")
    assert _rows(os.path.join(out, "predictions.csv")) == first

    assert add_heads.main(["-m", stock_model, "--labels_csv", labels_csv, "-o", mine, "-device", "cpu",
                           "--pools", "global"]) == 0   # new probes from the cached features
    capsys.readouterr()
    code, line = _predict(argv, capsys)
    assert code == 0 and line.startswith(f"{out}: {len(ids)} predicted, 0 kept, 0 removed (model or settings changed")
    assert [r["case_id"] for r in _rows(os.path.join(out, "predictions.csv"))] == ids


def test_add_heads_predict_is_nnunet_mtl_predict(heads_prediction, heads, dataset_2d, capsys):
    images, ids = _test_ids(dataset_2d)
    assert add_heads.main(["predict", "-m", heads, "-i", images, "-o", heads_prediction, "-device", "cpu"]) == 0
    assert f"0 predicted, {len(ids)} kept" in capsys.readouterr().out   # the same record, the same model


def test_errors_are_one_line_naming_the_folder(stock_model, tmp_path, capsys):  # noqa: F811
    assert add_heads.main(["-m", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "no plans.json" in capsys.readouterr().err
    for model, problem in ((str(tmp_path), "neither an nnunet_mtl model folder (no plans.json) nor a heads folder"),
                           (stock_model, "a stock nnU-Net model (no image-level heads); fit heads on it first")):
        assert predict.main(["-m", model, "-i", str(tmp_path), "-o", str(tmp_path / "o"), "-device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"nnunet_mtl_predict: error: {model}: {problem}")


def test_pipeline_adds_heads_then_predicts_with_them_and_a_rerun_redoes_nothing(
        heads, heads_prediction, stock_model, labels_csv, dataset_2d, tmp_path, capsys):  # noqa: F811
    from nnunet_mtl.cli import pipeline
    images, ids = _test_ids(dataset_2d)
    mine, out = str(tmp_path / "heads"), str(tmp_path / "pred")
    shutil.copytree(heads, mine)   # its feature cache too: the refit below runs no sliding window
    probe = os.path.join(mine, "fold_0", "probe.pkl")
    before = os.stat(probe).st_mtime_ns
    argv = ["--add_heads", "--stock_model", stock_model, "--labels_csv", labels_csv, "--model_dir", mine,
            "--inference_only", "--test_input", images, "--test_output", out, "--device", "cpu"]
    assert pipeline.main(argv + ["--overwrite"]) == 0
    assert os.stat(probe).st_mtime_ns != before   # fitted again
    assert f"{out}: {len(ids)} predicted" in capsys.readouterr().out
    assert [r["case_id"] for r in _rows(os.path.join(out, "predictions.csv"))] == ids
    for cid in ids:   # the stock model's masks (heads_prediction's equal nnUNetv2_predict's)
        np.testing.assert_array_equal(_mask(out, cid), _mask(heads_prediction, cid))

    fitted = os.stat(probe).st_mtime_ns
    assert pipeline.main(argv) == 0
    said = capsys.readouterr().out
    assert "heads already fitted from these inputs; kept" in said and f"0 predicted, {len(ids)} kept" in said
    assert os.stat(probe).st_mtime_ns == fitted


def test_pipeline_heads_errors_are_one_line(stock_model, tmp_path, capsys):  # noqa: F811
    from nnunet_mtl.cli import pipeline
    assert pipeline.main(["--add_heads", "--model_dir", str(tmp_path / "h")]) == 2
    assert capsys.readouterr().err.endswith("--add_heads needs --stock_model (the trained nnU-Net model) and "
                                            "--model_dir (where the heads go)\n")
    argv = ["--inference_only", "--model_dir", stock_model, "--test_input", str(tmp_path), "--device", "cpu"]
    assert pipeline.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a stock nnU-Net model (no image-level heads); fit heads on it first" in err


class _Killed(BaseException):
    """Stands for the run being killed right after its first row was recorded."""


def test_a_stopped_run_keeps_its_rows_and_gone_inputs_are_removed(heads, dataset_2d, tmp_path, capsys, monkeypatch):
    from nnunet_mtl.inference import record as prediction_merge
    src, ids = _test_ids(dataset_2d)
    images, out = tmp_path / "images", str(tmp_path / "pred")
    shutil.copytree(src, images)
    argv = ["-m", heads, "-i", str(images), "-o", out, "--disable_tta"]
    append = prediction_merge.PredictionRecord.append

    def append_then_stop(self, *args, **kwargs):
        append(self, *args, **kwargs)
        raise _Killed()

    monkeypatch.setattr(prediction_merge.PredictionRecord, "append", append_then_stop)
    with pytest.raises(_Killed):
        _predict(argv, capsys)
    monkeypatch.undo()
    assert _predict(argv, capsys) == (0, f"{out}: {len(ids) - 1} predicted, 1 kept, 0 removed")
    os.remove(images / f"{ids[0]}_0000.nii.gz")
    assert _predict(argv, capsys) == (0, f"{out}: 0 predicted, {len(ids) - 1} kept, 1 removed")
    assert [r["case_id"] for r in _rows(os.path.join(out, "predictions.csv"))] == ids[1:]
    assert not os.path.exists(os.path.join(out, ids[0] + ".nii.gz"))
