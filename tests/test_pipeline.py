"""pipeline.py on a tiny generic 2D layout (PNG images, masks, labels.csv), every step in-process through the
console script's ``main`` (tests/test_docs.py runs the script itself in a subprocess)."""
import contextlib
import csv
import glob
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from nnunet_mtl import workflow
from nnunet_mtl.cli import pipeline as pipeline_cli
from nnunet_mtl.synthetic import write_radiograph_layout

TINY = ["--planner", "plain", "--max_features", "32", "--batch_size", "4", "--n_stages", "4", "--folds", "3"]
BUDGET = ["--device", "cpu", "--epochs", "1", "--iterations_per_epoch", "3", "--val_iterations_per_epoch", "1"]
pytestmark = pytest.mark.timeout(900)


NNUNET_PATHS = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer")


@contextlib.contextmanager
def nnunet_paths_kept():
    """The nnU-Net folder variables the pipeline points at its base dir, put back afterwards (the session's
    datasets live elsewhere)."""
    saved = {k: os.environ.get(k) for k in NNUNET_PATHS}
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def pipeline(capsys, monkeypatch):
    """``pipeline.py ARGS`` in this process; returns (exit code, stdout, stderr). The nnU-Net folder variables are
    put back when the test ends, whatever pointed them elsewhere meanwhile (the pipeline, evaluate_validation)."""
    for k in NNUNET_PATHS:
        if k in os.environ:
            monkeypatch.setenv(k, os.environ[k])
        else:
            monkeypatch.delenv(k, raising=False)

    def run(*args):
        with nnunet_paths_kept():
            code = pipeline_cli.main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err
    return run


def prepare_radiographs(base, dataset_id: int, plan_flags, **layout) -> str:
    """A generic 2D layout under ``base/data`` prepared by ``pipeline.py --prepare_only`` into ``base/work``."""
    data = write_radiograph_layout(str(base / "data"), **layout)
    with nnunet_paths_kept():
        assert pipeline_cli.main(["--base_dir", str(base / "work"), "--input_dir", data, "--dataset_id",
                                  str(dataset_id), "--prepare_only", *plan_flags]) == 0
    return str(base / "work")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipe")
    prepare_radiographs(base, 931, TINY, n=12, n_test=3, size=(64, 64))
    return base, None


def _fold(base, k):
    return base / "work" / "nnUNet_results" / "Dataset931_data" / "nnUNetTrainerMTL__nnUNetPlans__2d" / f"fold_{k}"


def _heads_info(fold):
    return torch.load(str(fold / "checkpoint_final.pth"), map_location="cpu", weights_only=False).get("mtl_heads")


def test_prepare_only_writes_raw_dataset_plans_and_stratified_splits(prepared):
    base, _ = prepared
    raw = base / "work" / "nnUNet_raw" / "Dataset931_data"
    dj = json.load(open(raw / "dataset.json"))
    assert dj["numTraining"] == 12 and len(os.listdir(raw / "imagesTs")) == 3
    assert set(dj["mtl"]["cases"]) == {f"cxr_{i:03d}" for i in range(12)}
    pre = base / "work" / "nnUNet_preprocessed" / "Dataset931_data"
    assert (pre / "nnUNetPlans.json").is_file()
    splits = json.load(open(pre / "splits_final.json"))
    assert len(splits) == 3
    labels = {c: v["finding"] for c, v in dj["mtl"]["cases"].items()}
    for fold in splits:
        assert not set(fold["train"]) & set(fold["val"])
        val = [labels[c] for c in fold["val"]]
        assert val.count("present") in (len(val) // 2, (len(val) + 1) // 2), "val folds are stratified"
    state = json.load(open(base / "work" / "nnunet_mtl_pipeline.json"))
    assert state["configuration"] == "2d" and state["trainer"].startswith("nnUNetTrainerMTL")


def test_rerun_prepare_skips_finished_work(prepared, pipeline):
    base, _ = prepared
    plans = base / "work" / "nnUNet_preprocessed" / "Dataset931_data" / "nnUNetPlans.json"
    mtime = plans.stat().st_mtime
    code, out, _ = pipeline("--base_dir", str(base / "work"), "--input_dir", str(base / "data"), "--dataset_id", "931",
                            "--prepare_only", *TINY)
    assert code == 0 and "skipping" in out and plans.stat().st_mtime == mtime


def test_train_fits_the_heads_and_inference_predicts_with_them(prepared, pipeline, tmp_path):
    """The default (--heads fitted): after training, the heads fitted on the trained network's pooled features are
    written into its checkpoint (out-of-fold validation rows beside); a re-run keeps them; inference writes their
    rows beside the model's own masks, and Grad-CAM explains them."""
    base, _ = prepared
    work = str(base / "work")
    assert pipeline("--base_dir", work, "--train_only", "--fold", "0", *BUDGET)[0] == 0
    fold = _fold(base, 0)
    info = _heads_info(fold)
    assert info["kind"] == "fitted" and (fold / "validation" / "predictions.csv").is_file()
    fitted = (fold / "checkpoint_final.pth").stat().st_mtime_ns
    code, out, _ = pipeline("--base_dir", work, "--train_only", "--fold", "0", *BUDGET)
    assert code == 0 and "already trained and validated; skipping" in out
    assert "heads already fitted from these weights, labels and split; kept" in out
    assert (fold / "checkpoint_final.pth").stat().st_mtime_ns == fitted

    test_in, test_out = str(base / "data" / "test_images"), str(tmp_path / "pred")
    code, out, err = pipeline("--base_dir", work, "--inference_only", "--fold", "0", "--test_input", test_in,
                              "--test_output", test_out, "--device", "cpu", "--explain")
    assert code == 0, err
    rows = list(csv.DictReader(open(os.path.join(test_out, "predictions.csv"))))
    assert sorted(r["case_id"] for r in rows) == sorted(f[:-4] for f in os.listdir(test_in))
    assert all(os.path.isfile(os.path.join(test_out, r["case_id"] + ".png")) for r in rows)  # PNG in, PNG out
    overlays = sorted(f for f in os.listdir(os.path.join(test_out, "explanations")) if f.endswith("_overlay.png"))
    assert len(overlays) == len(rows) and all(o.startswith(tuple(r["case_id"] for r in rows)) for o in overlays)

    metrics = workflow.evaluate_validation(work, 0, str(tmp_path / "eval"), n_bootstrap=20)
    assert metrics["heads"] == "fitted"
    assert metrics["classification"]["finding"]["n"] == len(
        list(csv.DictReader(open(fold / "validation" / "predictions.csv"))))
    code, _, err = pipeline("--base_dir", work, "--inference_only", "--fold", "0", "--heads", "trained",
                            "--test_input", test_in, "--test_output", str(tmp_path / "trained"), "--device", "cpu")
    assert code == 2 and "were fitted after training (--heads fitted)" in err and err.count("\n") == 1


def test_the_default_inference_runs_on_openvino_and_says_so(prepared, pipeline, tmp_path, monkeypatch):
    """Without a backend chosen (no flag, no nnunet_mtl_backend), the pipeline predicts on the fast CPU backend with
    the torch path's masks."""
    base, _ = prepared
    if not _fold(base, 0).joinpath("checkpoint_final.pth").is_file():
        pytest.skip("needs the model trained by the test above")
    test_in = str(base / "data" / "test_images")
    monkeypatch.setenv("nnunet_mtl_openvino_cache", str(tmp_path / "ov_cache"))
    monkeypatch.delenv("nnunet_mtl_backend")
    code, out, err = pipeline("--base_dir", str(base / "work"), "--inference_only", "--fold", "0", "--test_input",
                              test_in, "--test_output", str(tmp_path / "ov"), "--device", "cpu")
    assert code == 0, err
    provenance = json.load(open(tmp_path / "ov" / "predictions_provenance.json"))
    assert provenance["model"]["backend"] == "openvino" and "openvino" in out
    monkeypatch.setenv("nnunet_mtl_backend", "torch")
    assert pipeline("--base_dir", str(base / "work"), "--inference_only", "--fold", "0", "--test_input", test_in,
                    "--test_output", str(tmp_path / "torch"), "--device", "cpu")[0] == 0
    for f in glob.glob(str(tmp_path / "torch" / "*.png")):
        same = np.asarray(Image.open(f)) == np.asarray(Image.open(str(tmp_path / "ov" / os.path.basename(f))))
        assert same.mean() > 0.999


def test_inference_fits_the_heads_a_model_trained_with_its_heads_lacks(prepared, pipeline, tmp_path):
    """--heads trained keeps the heads trained with the network; a later default inference fits them first."""
    base, _ = prepared
    work = str(base / "work")
    assert pipeline("--base_dir", work, "--train_only", "--fold", "1", "--heads", "trained", *BUDGET)[0] == 0
    assert _heads_info(_fold(base, 1)) is None
    test_in, test_out = str(base / "data" / "test_images"), str(tmp_path / "pred")
    code, out, err = pipeline("--base_dir", work, "--inference_only", "--fold", "1", "--test_input", test_in,
                              "--test_output", test_out, "--device", "cpu")
    assert code == 0, err
    assert "fitting heads on folds [1] first" in out and _heads_info(_fold(base, 1))["kind"] == "fitted"
    rows = list(csv.DictReader(open(os.path.join(test_out, "predictions.csv"))))
    assert sorted(r["case_id"] for r in rows) == sorted(f[:-4] for f in os.listdir(test_in))


def test_clear_errors(tmp_path, pipeline):
    code, _, err = pipeline("--base_dir", str(tmp_path), "--train_only")
    assert code == 2 and "nnunet_mtl_pipeline.json: not found" in err
    code, _, err = pipeline("--base_dir", str(tmp_path), "--prepare_only")
    assert code == 2 and "--input_dir is required" in err


def test_a_replaced_checkpoint_is_validated_and_fitted_again(prepared, pipeline):
    """Issue 26: after checkpoint_final.pth was replaced, --inference_only refuses in one line and says to run
    --train_only (not add_heads), and --train_only does not say 'already validated' over a stale validation/: it
    validates the new weights (nnU-Net's --val, no training) and fits the heads on them again."""
    from nnunet_mtl.model.network import unet_weights_hash
    base, _ = prepared
    fold = _fold(base, 1)
    if not fold.joinpath("checkpoint_final.pth").is_file():
        pytest.skip("needs the model trained by the test above")
    work = str(base / "work")
    ckpt = torch.load(str(fold / "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    for name, t in ckpt["network_weights"].items():  # other weights, as a replaced file has (every alias alike)
        if not name.startswith("heads.") and t.is_floating_point():
            ckpt["network_weights"][name] = t * 1.01
    torch.save(ckpt, str(fold / "checkpoint_final.pth"))
    new_hash = unet_weights_hash(ckpt["network_weights"])
    nowhere = base / "replaced_outputs"
    code, _, err = pipeline("--base_dir", work, "--inference_only", "--fold", "1", "--test_input", str(base),
                            "--test_output", str(nowhere))
    assert code == 2 and "was replaced after its validation" in err and "run --train_only --fold 1" in err, err
    assert not nowhere.exists()  # refused before anything was written
    code, out, err = pipeline("--base_dir", work, "--train_only", "--fold", "1", *BUDGET)
    assert code == 0, err
    assert "validation/ is from other weights than checkpoint_final.pth" in out and "validating again" in out
    assert "already trained and validated" not in out and "heads already fitted" not in out
    assert json.load(open(fold / "validation" / "validated_weights.json"))["unet_sha256"] == new_hash
    after = torch.load(str(fold / "checkpoint_final.pth"), map_location="cpu", weights_only=False)
    assert unet_weights_hash(after["network_weights"]) == new_hash  # validated and fitted, not retrained
    assert after["mtl_heads"]["kind"] == "fitted" and after["mtl_heads"]["unet_sha256"] == new_hash
    code, out, _ = pipeline("--base_dir", work, "--train_only", "--fold", "1", *BUDGET)
    assert code == 0 and "already trained and validated; skipping" in out
