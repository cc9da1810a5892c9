"""The accuracy benchmark's arm table, arm selection and report (benchmarks/accuracy.py), on made-up results:
no training, no model, seconds."""
import os
import sys
from types import SimpleNamespace

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import accuracy  # noqa: E402
import accuracy_report  # noqa: E402
from common import knobs_problem  # noqa: E402
from nnunet_mtl.training.knobs import BY_NAME, resolve_lrs  # noqa: E402

BUDGET = {"num_epochs": 20, "num_iterations_per_epoch": 50, "num_val_iterations_per_epoch": 1}


def names(selected):
    arms, probes = selected
    return [a.name for a in arms], probes


def test_default_run_has_stock_mtl_joint_and_both_fitted_arms():
    assert names(accuracy.select(None)) == (["stock", "mtl", "joint"], ["fitted", "fitted_mtl"])


def test_arms_by_name_add_what_they_start_from():
    assert names(accuracy.select(["finetune"])) == (["stock", "finetune"], [])
    assert names(accuracy.select(["fitted_mtl"])) == (["mtl"], ["fitted_mtl"])
    assert names(accuracy.select(["adamw", "multiscale", "mask_pooling", "balanced"])) == (
        ["adamw", "multiscale", "mask_pooling", "balanced"], [])
    with pytest.raises(SystemExit, match="unknown arm"):
        accuracy.select(["mtl_sgd"])


def test_every_arm_knob_is_known_to_the_trainers():
    folders = {"stock": "/models/stock"}
    for arm in accuracy.ARMS:
        assert knobs_problem(accuracy.arm_knobs(arm, BUDGET, folders)) is None, arm.name


def test_arm_notes_match_the_library_defaults():
    """'mtl' is the library default (no optimiser knob) and its note names that optimiser; 'adamw' sets it."""
    arms = {a.name: a for a in accuracy.ARMS}
    default = BY_NAME["optimizer_name"].default
    assert "optimizer_name" not in arms["mtl"].knobs
    lr, head_lr = resolve_lrs(default, None, None)
    assert default.upper() in arms["mtl"].note and f"lr {lr:.0e}".replace("e-0", "e-") in arms["mtl"].note
    assert f"lr {head_lr:.0e}".replace("e-0", "e-") in arms["mtl"].note
    assert arms["adamw"].knobs["optimizer_name"] == "adamw" != default


def test_finetune_starts_from_the_stock_folder_with_a_heads_only_phase():
    arm = next(a for a in accuracy.ARMS if a.name == "finetune")
    knobs = accuracy.arm_knobs(arm, BUDGET, {"stock": "/models/stock"})
    assert knobs["init_from"] == "/models/stock"
    assert knobs["heads_only_epochs"] == 5 and knobs["warmup_epochs"] == 0
    assert knobs["early_stopping_patience"] > BUDGET["num_epochs"]
    mtl = accuracy.arm_knobs(next(a for a in accuracy.ARMS if a.name == "mtl"), BUDGET, {})
    assert "init_from" not in mtl and mtl["warmup_epochs"] == 4


def spec():
    return [SimpleNamespace(name="size", is_classification=True, classes=["large", "small"]),
            SimpleNamespace(name="vol", is_classification=False, classes=None)]


def heads(auc, r):
    return {"size": {"macro_f1": 0.5, "balanced_accuracy": 0.6, "roc_auc": auc, "roc_auc_ci": {"low": 0.1, "high": 0.9}},
            "vol": {"mae": 0.2, "pearson_r": r, "pearson_r_ci": {"low": 0.0, "high": 0.9}}}


def fake_results():
    rows = [{"arm": "trivial", "heads": heads(0.5, 0.0)},
            {"arm": "fitted", "needs": "stock", "train_s": 10.0, "wall_s": 10.0, "heads": heads(0.85, 0.8)},
            {"arm": "fitted_mtl", "needs": "mtl", "train_s": 12.0, "wall_s": 12.0, "heads": heads(0.8, 0.7),
             "time_note": "features of 3 cases read from an earlier run's cache"},
            {"arm": "stock", "trainer": "nnUNetTrainer", "train_s": 300.0, "predict_s": 5.0, "wall_s": 305.0,
             "dice": {"a": 0.6, "p": 0.25}, "dice_ratio_min": 1.0},
            {"arm": "mtl", "trainer": "nnUNetTrainerMTL", "train_s": 200.0, "predict_s": 5.0, "wall_s": 205.0,
             "dice": {"a": 0.58, "p": 0.2}, "dice_ratio_min": 0.8, "heads": heads(0.75, 0.25)},
            {"arm": "finetune", "needs": "stock", "trainer": "nnUNetTrainerMTL", "train_s": 150.0, "predict_s": 5.0,
             "wall_s": 155.0, "dice": {"a": 0.67, "p": 0.43}, "dice_ratio_min": 1.1, "heads": heads(0.55, 0.1)}]
    return {"dataset": "hippocampus", "train": ["c"] * 7, "test": ["t"] * 3, "mirroring": False,
            "budget": BUDGET, "rows": rows, "skipped": [], "total_s": 900.0, "aggregation": {}}


def test_summary_line_has_the_new_keys():
    pairs = dict(accuracy_report.summary_pairs(fake_results(), spec()))
    assert pairs["frozen_vs_scratch_time"] == "0.0500"
    assert pairs["auc_fitted_mtl"] == "0.800" and pairs["r_fitted_mtl"] == "0.700"
    assert pairs["auc_default"] == "0.800" and pairs["r_default"] == "0.700"  # the pipeline's default output
    assert pairs["auc_finetune"] == "0.550" and pairs["r_finetune"] == "0.100"
    assert pairs["dice_a_finetune"] == "0.6700" and pairs["dice_p_finetune"] == "0.4300"
    assert pairs["dice_a_stock"] == "0.6000" and pairs["dice_ratio_min"] == "0.8000"


def test_time_table_counts_the_model_a_path_starts_from():
    t = {r["arm"]: r for r in accuracy_report.time_rows(fake_results()["rows"])}
    assert "trivial" not in t
    assert t["fitted"]["own_s"] == 10.0 and t["fitted"]["total_s"] == 310.0
    assert t["fitted"]["own_ratio"] == pytest.approx(0.05)
    assert t["finetune"]["total_s"] == 450.0 and t["finetune"]["total_ratio"] == pytest.approx(2.25)
    assert t["mtl"]["own_ratio"] == 1.0 and t["fitted_mtl"]["total_s"] == 212.0
    lines = accuracy_report.time_lines(fake_results()["rows"])
    assert any("cache" in line for line in lines) and len(lines) == 2 + 5


def test_no_ratio_without_the_scratch_arm():
    rows = [r for r in fake_results()["rows"] if r["arm"] != "mtl"]
    assert accuracy_report.frozen_vs_scratch(rows) is None
    res = {**fake_results(), "rows": rows}
    assert dict(accuracy_report.summary_pairs(res, spec()))["frozen_vs_scratch_time"] == "-"
