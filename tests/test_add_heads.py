"""nnunet_mtl_add_heads: heads fitted on a trained stock model (per fold, out of fold validated) make a model
folder of ours (the stock weights plus the heads), predicted with like any other."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_mtl.cli import add_heads, predict
from nnunet_mtl.inference.folders import predict_folder
from nnunet_mtl.inference.loader import load_predictor
from nnunet_mtl.inference.predictor import nnUNetPredictorMTL

pytestmark = pytest.mark.timeout(300)


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _checkpoint(model):
    return torch.load(os.path.join(model, "fold_0", "checkpoint_final.pth"), map_location="cpu", weights_only=False)


def test_fit_writes_a_model_folder_with_the_stock_weights_and_fitted_heads(fitted_2d, stock_2d, dataset_2d):
    with open(os.path.join(dataset_2d.preprocessed_folder, "splits_final.json")) as f:
        split = json.load(f)[0]
    ours, stock = _checkpoint(fitted_2d), _checkpoint(stock_2d)
    assert ours["trainer_name"] == "nnUNetTrainerMTL" and stock["trainer_name"] == "nnUNetTrainer"
    assert {k for k in ours["network_weights"] if not k.startswith("heads.")} == set(stock["network_weights"])
    assert all(torch.equal(v, ours["network_weights"][k]) for k, v in stock["network_weights"].items())
    info = ours["mtl_heads"]
    assert info["kind"] == "fitted" and info["train_cases"] == sorted(split["train"]) and info["sklearn_version"]
    rows = _rows(os.path.join(fitted_2d, "fold_0", "validation", "predictions.csv"))
    assert [r["case_id"] for r in rows] == sorted(split["val"])
    with open(os.path.join(fitted_2d, "fold_0", "validation", "mtl_summary.json")) as f:
        summary = json.load(f)
    assert summary["heads"] == "fitted" and summary["targets"]["finding"]["n"] == len(rows)
    with open(os.path.join(fitted_2d, "plans.json")) as f:
        assert [t["name"] for t in json.load(f)["mtl_targets"]] == ["finding"]


def test_a_second_fit_reads_the_feature_cache(fitted_2d, stock_2d, labels_csv, tmp_path, monkeypatch):
    def no_sliding_window(*args, **kwargs):
        raise AssertionError("a cached case was pooled again")

    monkeypatch.setattr(nnUNetPredictorMTL, "case_pools", no_sliding_window)
    from nnunet_mtl import workflow
    summary = workflow.add_heads(None, stock_2d, str(tmp_path / "again"), labels_csv, device="cpu", backend="torch",
                                 cache_dir=os.path.join(fitted_2d, "feature_cache"), pools=("global",))
    assert summary["folds"]["0"]["heads"] == "fitted"
    assert _checkpoint(str(tmp_path / "again"))["mtl_heads"]["pools"] == ["global"]


def _test_ids(dataset_2d):
    images = os.path.join(dataset_2d.raw_folder, "imagesTs")
    return images, sorted({f[:-len("_0000.nii.gz")] for f in os.listdir(images)})


def _predict(argv, capsys):
    """nnunet_mtl_predict; returns its exit code and the 'N predicted, M kept, K removed' line."""
    code = predict.main(argv + ["-device", "cpu", "-npp", "1", "-nps", "1"])
    out = capsys.readouterr().out
    return code, next((line for line in out.splitlines() if " predicted, " in line), "")


def _stock_masks(stock_model, images, out):
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
def heads_prediction(fitted_2d, dataset_2d, tmp_path_factory):
    """nnunet_mtl_predict -m MODEL on the test images (first run)."""
    images, _ = _test_ids(dataset_2d)
    out = str(tmp_path_factory.mktemp("heads_pred") / "pred")
    assert predict.main(["-m", fitted_2d, "-i", images, "-o", out, "-device", "cpu", "-npp", "1", "-nps", "1"]) == 0
    return out


def test_predict_with_fitted_heads_gives_stock_masks_and_a_row_per_case(heads_prediction, stock_2d, dataset_2d,
                                                                        tmp_path):
    images, ids = _test_ids(dataset_2d)
    rows = _rows(os.path.join(heads_prediction, "predictions.csv"))
    assert [r["case_id"] for r in rows] == ids
    assert all(abs(sum(float(v) for k, v in r.items() if "_prob_" in k) - 1) < 1e-6 for r in rows)
    stock_out = _stock_masks(stock_2d, images, str(tmp_path / "stock"))
    for cid in ids:
        np.testing.assert_array_equal(_mask(heads_prediction, cid), _mask(stock_out, cid))


def test_fitting_writes_conformal_scores_and_predictions_carry_sets(heads_prediction, fitted_2d):
    """fold_0/conformal.json from the out-of-fold rows; every predicted row has a set at the default coverage."""
    with open(os.path.join(fitted_2d, "fold_0", "conformal.json")) as f:
        content = json.load(f)
    finding = content["targets"]["finding"]
    n_val = len(_rows(os.path.join(fitted_2d, "fold_0", "validation", "predictions.csv")))
    assert finding["n_cases"] == len(finding["scores"]) <= n_val
    classes = set(finding["classes"])
    for row in _rows(os.path.join(heads_prediction, "predictions.csv")):
        members = set(row["finding_set"].split("|")) - {""}
        assert members <= classes and row["conformal_coverage"] == "0.9"
        assert row["needs_review"] == ("no" if len(members) == 1 else "yes")
        if finding["n_cases"] < 9:  # too few cases to leave any class out at 90 %: every set holds all
            assert members == classes


def test_predicted_rows_equal_the_out_of_fold_rows_of_the_same_cases(fitted_2d, dataset_2d, tmp_path):
    """Prediction pools the features the heads were fitted on (each tile's unmirrored forward): a validation case
    predicted from its raw image gets the probabilities of its out-of-fold validation row, with or without
    test-time mirroring of the masks."""
    val_rows = {r["case_id"]: r for r in _rows(os.path.join(fitted_2d, "fold_0", "validation", "predictions.csv"))}
    images = tmp_path / "val_images"
    images.mkdir()
    for cid in val_rows:
        os.symlink(os.path.join(dataset_2d.raw_folder, "imagesTr", cid + "_0000.nii.gz"),
                   images / (cid + "_0000.nii.gz"))
    for mirroring in (False, True):
        predictor = load_predictor(fitted_2d, use_mirroring=mirroring, backend="torch")
        csv_path = predict_folder(predictor, str(images), str(tmp_path / f"pred_{mirroring}"),
                                  num_processes_preprocessing=1, num_processes_export=1)
        rows = _rows(csv_path)
        assert sorted(r["case_id"] for r in rows) == sorted(val_rows)
        for row in rows:
            probs = {k: float(v) for k, v in row.items() if "_prob_" in k}
            assert probs and all(abs(p - float(val_rows[row["case_id"]][k])) < 1e-5 for k, p in probs.items())


def test_rerun_keeps_rows_and_refitted_heads_predict_again(fitted_2d, stock_2d, labels_csv, dataset_2d, tmp_path,
                                                           capsys):
    images, ids = _test_ids(dataset_2d)
    mine = str(tmp_path / "heads")
    shutil.copytree(fitted_2d, mine)
    out = str(tmp_path / "pred")
    argv = ["-m", mine, "-i", images, "-o", out]
    assert _predict(argv, capsys) == (0, f"{out}: {len(ids)} predicted, 0 kept, 0 removed")
    first = _rows(os.path.join(out, "predictions.csv"))
    code, line = _predict(argv, capsys)
    assert (code, line) == (0, f"{out}: 0 predicted, {len(ids)} kept, 0 removed")
    assert _rows(os.path.join(out, "predictions.csv")) == first

    assert add_heads.main(["-m", stock_2d, "--labels_csv", labels_csv, "-o", mine, "-device", "cpu",
                           "--pools", "global"]) == 0   # new heads from the cached features
    capsys.readouterr()
    code, line = _predict(argv, capsys)
    assert code == 0 and line.startswith(f"{out}: {len(ids)} predicted, 0 kept, 0 removed (model or settings changed")
    assert [r["case_id"] for r in _rows(os.path.join(out, "predictions.csv"))] == ids


def test_add_heads_predict_is_nnunet_mtl_predict(heads_prediction, fitted_2d, dataset_2d, capsys):
    images, ids = _test_ids(dataset_2d)
    assert add_heads.main(["predict", "-m", fitted_2d, "-i", images, "-o", heads_prediction, "-device", "cpu"]) == 0
    assert f"0 predicted, {len(ids)} kept" in capsys.readouterr().out   # the same record, the same model


def test_errors_are_one_line_naming_the_folder(stock_2d, tmp_path, capsys):
    assert add_heads.main(["-m", str(tmp_path), "-o", str(tmp_path / "o")]) == 2
    assert "no plans.json" in capsys.readouterr().err
    for model, problem in ((str(tmp_path), "not an nnU-Net model folder (no plans.json)"),
                           (stock_2d, "a stock nnU-Net model (no image-level heads); fit heads on it first")):
        assert predict.main(["-m", model, "-i", str(tmp_path), "-o", str(tmp_path / "o"), "-device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"nnunet_mtl_predict: error: {model}: {problem}")


def test_pipeline_adds_heads_then_predicts_with_them_and_a_rerun_redoes_nothing(
        fitted_2d, heads_prediction, stock_2d, labels_csv, dataset_2d, tmp_path, capsys):
    from nnunet_mtl.cli import pipeline
    images, ids = _test_ids(dataset_2d)
    mine, out = str(tmp_path / "heads"), str(tmp_path / "pred")
    shutil.copytree(fitted_2d, mine)   # its feature cache too: the refit below runs no sliding window
    probe = os.path.join(mine, "fold_0", "checkpoint_final.pth")
    before = os.stat(probe).st_mtime_ns
    argv = ["--add_heads", "--stock_model", stock_2d, "--labels_csv", labels_csv, "--model_dir", mine,
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
    assert "heads already fitted from these weights, labels and split; kept" in said
    assert f"0 predicted, {len(ids)} kept" in said
    assert os.stat(probe).st_mtime_ns == fitted


def test_pipeline_heads_errors_are_one_line(stock_2d, tmp_path, capsys):
    from nnunet_mtl.cli import pipeline
    assert pipeline.main(["--add_heads", "--model_dir", str(tmp_path / "h")]) == 2
    assert capsys.readouterr().err.endswith("--add_heads needs --stock_model (the trained nnU-Net model) and "
                                            "--model_dir (the model folder to write)\n")
    argv = ["--inference_only", "--model_dir", stock_2d, "--test_input", str(tmp_path), "--device", "cpu"]
    assert pipeline.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "a stock nnU-Net model (no image-level heads); fit heads on it first" in err


class _Killed(BaseException):
    """Stands for the run being killed right after its first row was recorded."""


def test_a_stopped_run_keeps_its_rows_and_gone_inputs_are_removed(fitted_2d, dataset_2d, tmp_path, capsys,
                                                                  monkeypatch):
    from nnunet_mtl.inference import record as prediction_merge
    src, ids = _test_ids(dataset_2d)
    images, out = tmp_path / "images", str(tmp_path / "pred")
    shutil.copytree(src, images)
    argv = ["-m", fitted_2d, "-i", str(images), "-o", out, "--disable_tta"]
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
