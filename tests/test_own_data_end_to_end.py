"""Your own data from the command line: named structures, a region and a left/right pair reach
training (the left-right axis is not mirrored, and the log says so) and the evaluation report."""
import glob
import json
import os

from tests.test_conversion_inputs import lung_layout
from tests.test_pipeline import TINY, pipeline


def test_named_structures_region_and_pair_reach_training_and_evaluation(tmp_path):
    data = lung_layout(str(tmp_path / "cxr"), n=8, size=(64, 64))
    work = str(tmp_path / "work")
    pipeline("--base_dir", work, "--input_dir", data, "--dataset_id", "935", "--prepare_only", *TINY,
             "--label_names", "1=left_lung", "2=right_lung", "3=opacity", "--regions", "lungs=1,2")
    state = json.load(open(os.path.join(work, "nnunet_mtl_pipeline.json")))
    assert state["trainer"] == "nnUNetTrainerMTLOrientationAware"  # the declared names are a lateral pair
    pipeline("--base_dir", work, "--train_only", "--fold", "0", "--epochs", "1", "--iterations_per_epoch", "2",
             "--val_iterations_per_epoch", "1", "--device", "cpu", "--heads", "joint")  # about training: no probes
    fold = glob.glob(os.path.join(work, "nnUNet_results", "*", "*", "fold_0"))[0]
    log = open(glob.glob(os.path.join(fold, "training_log_*.txt"))[0]).read()
    assert "left_lung<->right_lung" in log and "Not mirroring axis 1" in log

    from nnunet_mtl import workflow
    saved_env = {k: v for k, v in os.environ.items() if k.startswith("nnUNet_")}
    try:
        metrics = workflow.evaluate_validation(work, 0, n_bootstrap=10)
    finally:  # evaluate_validation points nnU-Net at this base dir; the session's fixtures use another
        for k in [k for k in os.environ if k.startswith("nnUNet_")]:
            del os.environ[k]
        os.environ.update(saved_env)
    names = {entry["name"] for entry in metrics["segmentation"]["labels"].values()}
    assert names == {"left_lung", "right_lung", "opacity"}
    assert set(metrics["segmentation"]["regions"]) == {"lungs"}
    saved = json.load(open(os.path.join(work, "evaluation_fold0", "metrics.json")))
    assert saved["segmentation"]["regions"]["lungs"]["labels"] == [1, 2]
