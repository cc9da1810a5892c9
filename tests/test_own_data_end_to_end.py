"""Your own data from the command line: named structures, a region and a left/right pair reach
training (the left-right axis is not mirrored, and the log says so) and the evaluation report."""
import glob
import json
import os

from nnunet_mtl import workflow
from tests.test_conversion_inputs import lung_layout
from tests.test_pipeline import TINY, pipeline  # noqa: F401  (fixture: pipeline.py in this process)


def test_named_structures_region_and_pair_reach_training_and_evaluation(tmp_path, pipeline):  # noqa: F811
    data = lung_layout(str(tmp_path / "cxr"), n=8, size=(64, 64))
    work = str(tmp_path / "work")
    assert pipeline("--base_dir", work, "--input_dir", data, "--dataset_id", "935", "--prepare_only", *TINY,
                    "--label_names", "1=left_lung", "2=right_lung", "3=opacity", "--regions", "lungs=1,2")[0] == 0
    state = json.load(open(os.path.join(work, "nnunet_mtl_pipeline.json")))
    assert state["trainer"] == "nnUNetTrainerMTLOrientationAware"  # the declared names are a lateral pair
    assert pipeline("--base_dir", work, "--train_only", "--fold", "0", "--epochs", "1", "--iterations_per_epoch", "2",
                    "--val_iterations_per_epoch", "1", "--device", "cpu", "--heads", "trained")[0] == 0
    fold = glob.glob(os.path.join(work, "nnUNet_results", "*", "*", "fold_0"))[0]
    log = open(glob.glob(os.path.join(fold, "training_log_*.txt"))[0]).read()
    assert "left_lung<->right_lung" in log and "Not mirroring axis 1" in log

    metrics = workflow.evaluate_validation(work, 0, n_bootstrap=10)  # the pipeline fixture restores nnU-Net's paths
    names = {entry["name"] for entry in metrics["segmentation"]["labels"].values()}
    assert names == {"left_lung", "right_lung", "opacity"}
    assert set(metrics["segmentation"]["regions"]) == {"lungs"}
    saved = json.load(open(os.path.join(work, "evaluation_fold0", "metrics.json")))
    assert saved["segmentation"]["regions"]["lungs"]["labels"] == [1, 2]
