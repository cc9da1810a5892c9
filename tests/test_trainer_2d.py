"""The MTL trainer inside real nnU-Net 2.8 (plan, preprocess, train, validate) on tiny 2D data."""
import json
import os

import numpy as np
import pytest
import torch

from nnunet_mtl.dataset_spec import DatasetSpec
from tests.helpers import make_trainer, train


def test_one_encoder_forward_per_training_step(dataset_2d):
    trainer = make_trainer(dataset_2d)
    calls = []
    hook = trainer.network.encoder.register_forward_hook(lambda *a: calls.append(1))
    out = trainer.train_step(next(trainer.dataloader_train))
    hook.remove()
    assert len(calls) == 1
    assert {"loss", "seg_loss", "head_loss"} <= set(out)


def test_head_trains_during_segmentation_first_phase(dataset_2d):
    trainer = make_trainer(dataset_2d, warmup_epochs=20)
    assert trainer.current_epoch == 0 and trainer.loss_weights() == pytest.approx((0.9, 0.1))
    before = {k: v.clone() for k, v in trainer.network.heads.state_dict().items() if "fc" in k}
    enc_before = [p.clone() for p in trainer.network.encoder.parameters()]
    trainer.train_step(next(trainer.dataloader_train))
    after = trainer.network.heads.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before), "head got no update in phase 1"
    assert any(not torch.equal(a, b) for a, b in zip(enc_before, trainer.network.encoder.parameters()))


def test_head_receives_zero_gradient_only_when_its_weight_is_zero(dataset_2d):
    trainer = make_trainer(dataset_2d, head_weight_start=0.0, warmup_epochs=5)
    trainer.train_step(next(trainer.dataloader_train))
    grad = trainer.network.heads["finding"].fc.weight.grad
    assert grad is None or torch.count_nonzero(grad) == 0


def test_class_weights_match_hand_count_of_training_split(dataset_2d):
    trainer = make_trainer(dataset_2d, fold=1, class_weight_smoothing=0.5)
    tr_keys, val_keys = trainer.do_split()
    table = DatasetSpec.from_dataset_json(dataset_2d.dataset_json).table
    counts = [sum(1 for k in tr_keys if table.value(k, "finding") == c) for c in ("absent", "present")]
    raw = 1.0 / (np.array(counts) + 0.5)
    assert np.allclose(trainer.head_loss.cw_finding.numpy(), raw / raw.mean())
    assert not set(tr_keys) & set(val_keys)


def test_training_validation_and_outputs(trained_2d, dataset_2d):
    fold = os.path.join(trained_2d, "fold_0")
    for name in ("checkpoint_final.pth", "checkpoint_best.pth", "checkpoint_best_mtl.json", "mtl_progress.json",
                 "mtl_progress.png", "validation/summary.json", "validation/predictions.csv",
                 "validation/mtl_summary.json"):
        assert os.path.isfile(os.path.join(fold, name)), name
    plans = json.load(open(os.path.join(trained_2d, "plans.json")))
    assert plans["mtl_targets"][0]["classes"] == ["absent", "present"]
    splits = json.load(open(os.path.join(dataset_2d.preprocessed_folder, "splits_final.json")))
    val_cases = sorted(splits[0]["val"])
    rows = open(os.path.join(fold, "validation/predictions.csv")).read().splitlines()
    assert rows[0].split(",") == ["case_id", "finding", "finding_prob_absent", "finding_prob_present"]
    assert sorted(r.split(",")[0] for r in rows[1:]) == val_cases
    for r in rows[1:]:
        probs = [float(v) for v in r.split(",")[2:]]
        assert abs(sum(probs) - 1) < 1e-5
    summary = json.load(open(os.path.join(fold, "validation/mtl_summary.json")))
    assert summary["n_cases"] == len(val_cases) and 0 <= summary["targets"]["finding"]["macro_f1"] <= 1
    history = json.load(open(os.path.join(fold, "mtl_progress.json")))
    assert [h["epoch"] for h in history] == [0, 1]
    assert history[0]["head_weight"] == pytest.approx(0.1) and history[1]["head_weight"] == pytest.approx(0.5)
    for key in ("train_head_loss", "val_finding_acc", "val_finding_macro_f1", "combined_score", "seg_weight"):
        assert key in history[0]


def test_continue_training_resumes_mtl_state(dataset_2d):
    folder = train(dataset_2d, "nnUNetTrainerMTL", 2, validate=False, num_epochs=1)
    fold = os.path.join(folder, "fold_2")
    assert len(json.load(open(os.path.join(fold, "mtl_progress.json")))) == 1
    train(dataset_2d, "nnUNetTrainerMTL", 2, continue_training=True, validate=False, num_epochs=2)
    history = json.load(open(os.path.join(fold, "mtl_progress.json")))
    assert [h["epoch"] for h in history] == [0, 1]


def test_early_stopping_ends_training(dataset_2d):
    folder = train(dataset_2d, "nnUNetTrainerMTL", 3, validate=False, num_epochs=6, early_stopping_patience=1,
                   num_iterations_per_epoch=1, initial_lr=0.0)
    fold = os.path.join(folder, "fold_3")
    history = json.load(open(os.path.join(fold, "mtl_progress.json")))
    assert len(history) < 6, "with lr 0 the score cannot keep improving; patience 1 must stop early"
    assert os.path.isfile(os.path.join(fold, "checkpoint_final.pth"))


def test_short_budget_variants_are_found_by_name_and_knobs_still_win(dataset_2d):
    from nnunetv2.run.run_training import get_trainer_from_args
    from tests.helpers import overrides
    with overrides():
        t = get_trainer_from_args(str(dataset_2d.id), "2d", 0, "nnUNetTrainerMTL_5epochs", dataset_2d.plans,
                                  device=torch.device("cpu"))
    assert t.num_epochs == 5 and type(t).__name__ == "nnUNetTrainerMTL_5epochs"
    with overrides(num_epochs=3):
        t = get_trainer_from_args(str(dataset_2d.id), "2d", 0, "nnUNetTrainerMTL_5epochs", dataset_2d.plans,
                                  device=torch.device("cpu"))
    assert t.num_epochs == 3
