"""pipeline.py, each flag in a subprocess, on a tiny generic 2D layout (PNG images, masks, labels.csv)."""
import csv
import json
import os
import subprocess
import sys

import pytest

from nnunet_mtl.synthetic import write_radiograph_layout

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--planner", "plain", "--max_features", "32", "--batch_size", "4", "--n_stages", "4", "--folds", "3"]
pytestmark = pytest.mark.timeout(900)


def pipeline(*args, ok=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith("nnUNet_") or k in
           ("nnUNet_n_proc_DA", "nnUNet_def_n_proc", "nnUNet_compile")}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "pipeline.py"), *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=800)
    if ok:
        assert proc.returncode == 0, f"{args}\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return proc


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("pipe")
    data = write_radiograph_layout(str(base / "data"), n=12, n_test=3, size=(64, 64))
    out = pipeline("--base_dir", str(base / "work"), "--input_dir", data, "--dataset_id", "931", "--prepare_only",
                   *TINY)
    return base, out


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


def test_rerun_prepare_skips_finished_work(prepared):
    base, _ = prepared
    data = str(base / "data")
    plans = base / "work" / "nnUNet_preprocessed" / "Dataset931_data" / "nnUNetPlans.json"
    mtime = plans.stat().st_mtime
    out = pipeline("--base_dir", str(base / "work"), "--input_dir", data, "--dataset_id", "931", "--prepare_only", *TINY)
    assert "skipping" in out.stdout and plans.stat().st_mtime == mtime


def test_train_only_then_inference_only(prepared, tmp_path):
    base, _ = prepared
    work = str(base / "work")
    pipeline("--base_dir", work, "--train_only", "--fold", "0", "--device", "cpu", "--epochs", "1",
             "--iterations_per_epoch", "3", "--val_iterations_per_epoch", "1")
    fold = base / "work" / "nnUNet_results" / "Dataset931_data" / "nnUNetTrainerMTL__nnUNetPlans__2d" / "fold_0"
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "predictions.csv").is_file()
    out = pipeline("--base_dir", work, "--train_only", "--fold", "0", "--device", "cpu")
    assert "skipping" in out.stdout
    test_in, test_out = str(base / "data" / "test_images"), str(tmp_path / "pred")
    pipeline("--base_dir", work, "--inference_only", "--test_input", test_in, "--test_output", test_out,
             "--device", "cpu", "--explain")
    rows = list(csv.DictReader(open(os.path.join(test_out, "predictions.csv"))))
    assert sorted(r["case_id"] for r in rows) == sorted(f[:-4] for f in os.listdir(test_in))
    assert all(os.path.isfile(os.path.join(test_out, r["case_id"] + ".png")) for r in rows)  # PNG in, PNG out
    overlays = sorted(f for f in os.listdir(os.path.join(test_out, "explanations")) if f.endswith("_overlay.png"))
    assert len(overlays) == len(rows) and all(o.startswith(tuple(r["case_id"] for r in rows)) for o in overlays)


def test_clear_errors(tmp_path):
    out = pipeline("--base_dir", str(tmp_path), "--train_only", ok=False)
    assert out.returncode == 2 and "nnunet_mtl_pipeline.json: not found" in out.stderr
    out = pipeline("--base_dir", str(tmp_path), "--prepare_only", ok=False)
    assert out.returncode == 2 and "--input_dir is required" in out.stderr


def test_probe_heads_fitted_on_the_trained_model_predict_with_its_masks(prepared, tmp_path, monkeypatch):
    """--heads probe: after training, linear probes on the trained model's own features (out-of-fold
    validation); inference writes their rows beside the model's own masks; a re-run keeps the probes."""
    base, _ = prepared
    work = str(base / "work")
    budget = ["--device", "cpu", "--epochs", "1", "--iterations_per_epoch", "3", "--val_iterations_per_epoch", "1"]
    pipeline("--base_dir", work, "--train_only", "--fold", "0", "--heads", "probe", *budget)
    probe = base / "work" / "probe_heads" / "fold_0" / "probe.pkl"
    assert probe.is_file() and (probe.parent / "validation" / "predictions.csv").is_file()
    fitted = probe.stat().st_mtime_ns
    out = pipeline("--base_dir", work, "--train_only", "--fold", "0", "--heads", "probe", *budget)
    assert "heads already fitted from these inputs; kept" in out.stdout and probe.stat().st_mtime_ns == fitted

    test_in = str(base / "data" / "test_images")
    joint, probed = str(tmp_path / "joint"), str(tmp_path / "probe")
    pipeline("--base_dir", work, "--inference_only", "--fold", "0", "--heads", "joint", "--test_input", test_in,
             "--test_output", joint, "--device", "cpu")
    pipeline("--base_dir", work, "--inference_only", "--test_input", test_in, "--test_output", probed,
             "--device", "cpu")   # probe heads: the default
    rows = list(csv.DictReader(open(os.path.join(probed, "predictions.csv"))))
    assert sorted(r["case_id"] for r in rows) == sorted(f[:-4] for f in os.listdir(test_in))
    from PIL import Image
    import numpy as np
    for r in rows:  # the trained model's masks either way
        np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(probed, r["case_id"] + ".png"))),
                                      np.asarray(Image.open(os.path.join(joint, r["case_id"] + ".png"))))
    provenance = json.load(open(os.path.join(probed, "predictions_provenance.json")))
    assert "probe_heads" in json.dumps(provenance["model"])

    from nnunet_mtl import workflow
    for k in [k for k in os.environ if k.startswith("nnUNet_")]:  # evaluate_validation points nnU-Net at
        monkeypatch.setenv(k, os.environ[k])                         # this base dir: restored afterwards
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        if k not in os.environ:  # recorded as unset, so removed again afterwards
            monkeypatch.setenv(k, "")
            monkeypatch.delenv(k)
    metrics = workflow.evaluate_validation(work, 0, str(tmp_path / "eval"), n_bootstrap=20, heads="probe")
    assert metrics["classification"]["finding"]["n"] == len(
        list(csv.DictReader(open(probe.parent / "validation" / "predictions.csv"))))
    assert metrics["heads"] == "probe"
    assert workflow.evaluate_validation(work, 0, str(tmp_path / "auto"), n_bootstrap=0)["heads"] == "probe"
    # a replaced checkpoint makes the probes' rows an older model's: refused when asked for, not chosen by default
    import glob
    ckpt = glob.glob(os.path.join(work, "nnUNet_results", "*", "*", "fold_0", "checkpoint_final.pth"))[0]
    st = os.stat(ckpt)
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    try:
        with pytest.raises(workflow.PipelineError, match="changed since the heads were fitted"):
            workflow.evaluate_validation(work, 0, str(tmp_path / "stale"), n_bootstrap=0, heads="probe")
        assert workflow.evaluate_validation(work, 0, str(tmp_path / "stale"), n_bootstrap=0)["heads"] == "joint"
    finally:
        os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns))


def test_inference_fits_the_probe_heads_a_trained_model_lacks(prepared, tmp_path):
    """A model trained before probes were the default (no BASE_DIR/probe_heads) gets them at inference."""
    import shutil
    base, _ = prepared
    work, probes = str(base / "work"), base / "work" / "probe_heads"
    if probes.exists():  # fitted by the tests above
        shutil.move(str(probes), str(tmp_path / "old_probe_heads"))
    test_in, test_out = str(base / "data" / "test_images"), str(tmp_path / "pred")
    out = pipeline("--base_dir", work, "--inference_only", "--fold", "0", "--test_input", test_in,
                   "--test_output", test_out, "--device", "cpu")
    assert "no probe heads yet; fitting them" in out.stdout and (probes / "fold_0" / "probe.pkl").is_file()
    rows = list(csv.DictReader(open(os.path.join(test_out, "predictions.csv"))))
    assert sorted(r["case_id"] for r in rows) == sorted(f[:-4] for f in os.listdir(test_in))
