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


@pytest.mark.parametrize("joint, weights", [(False, (1.0, 0.1)), (True, (0.9, 0.1))])
def test_head_trains_during_segmentation_first_phase(dataset_2d, joint, weights):
    """Default: the segmentation keeps its full weight (stock's loss); with the joint gradient the schedule mixes."""
    trainer = make_trainer(dataset_2d, warmup_epochs=20, heads_train_encoder=joint)
    assert trainer.current_epoch == 0 and trainer.loss_weights() == pytest.approx(weights)
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
    assert np.allclose(trainer.head_loss.cw_finding.numpy(), raw / ((np.array(counts) * raw).sum() / sum(counts)))
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
    header = rows[0].split(",")
    assert header[:5] == ["case_id", "finding", "finding_prob_absent", "finding_prob_present",
                          "probabilities_calibrated"]
    assert header[5:8] == ["finding_set", "conformal_coverage", "needs_review"]  # empty: not calibrated on itself
    assert header[8:] == ["seg_quality", "seg_quality_flag"]                     # the mask's own estimate
    assert sorted(r.split(",")[0] for r in rows[1:]) == val_cases
    for r in rows[1:]:  # the validation table holds the raw probabilities the temperature is fitted on
        probs = [float(v) for v in r.split(",")[2:4]]
        assert abs(sum(probs) - 1) < 1e-5 and r.split(",")[4] == "no"
    summary = json.load(open(os.path.join(fold, "validation/mtl_summary.json")))
    assert summary["n_cases"] == len(val_cases) and 0 <= summary["targets"]["finding"]["macro_f1"] <= 1
    history = json.load(open(os.path.join(fold, "mtl_progress.json")))
    assert [h["epoch"] for h in history] == [0, 1]
    assert history[0]["head_weight"] == pytest.approx(0.1) and history[1]["head_weight"] == pytest.approx(0.5)
    for key in ("train_head_loss", "val_finding_acc", "val_finding_macro_f1", "combined_score", "seg_weight"):
        assert key in history[0]


def _trainer(ds, fold, continue_training=False, **knobs):
    """A trainer as nnU-Net's run_training makes it (checkpoint loaded when continuing), without running it."""
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
    from tests.helpers import overrides
    with overrides(**knobs):
        t = get_trainer_from_args(str(ds.id), ds.configuration, fold, "nnUNetTrainerMTL", ds.plans, continue_training,
                                  device=torch.device("cpu"))
        maybe_load_checkpoint(t, continue_training, False, None)
    return t


def test_continue_training_resumes_an_interrupted_fold(dataset_2d):
    t = _trainer(dataset_2d, 2, num_epochs=3, save_every=1, num_iterations_per_epoch=1, num_val_iterations_per_epoch=1)
    end_of_epoch = t.on_epoch_end

    def killed_after_epoch_1():
        end_of_epoch()
        if t.current_epoch == 2:
            raise KeyboardInterrupt("killed")
    t.on_epoch_end = killed_after_epoch_1
    with pytest.raises(KeyboardInterrupt):
        t.run_training()
    fold = os.path.join(dataset_2d.model_folder("nnUNetTrainerMTL"), "fold_2")
    assert not os.path.isfile(os.path.join(fold, "checkpoint_final.pth"))
    train(dataset_2d, "nnUNetTrainerMTL", 2, continue_training=True, validate=False, num_epochs=3,
          num_iterations_per_epoch=1, num_val_iterations_per_epoch=1)
    history = json.load(open(os.path.join(fold, "mtl_progress.json")))
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert json.load(open(os.path.join(fold, "checkpoint_final_mtl.json")))["finished"] is True


def test_early_stopping_keeps_the_best_weights_and_the_fold_stays_finished(dataset_2d):
    """Scores fall after epoch 0, patience 1: training stops after epoch 1, checkpoint_final holds epoch 0's
    weights (the selected ones, not the last), and continuing the fold trains nothing."""
    knobs = dict(num_epochs=6, early_stopping_patience=1, num_iterations_per_epoch=1, num_val_iterations_per_epoch=1,
                 initial_lr=1e-2)
    t = _trainer(dataset_2d, 3, **knobs)
    end_of_validation, end_of_epoch, last = t.on_validation_epoch_end, t.on_epoch_end, {}

    def falling_scores(val_outputs):
        end_of_validation(val_outputs)
        t._epoch_record.update(head_score=1.0 - 0.1 * t.current_epoch, pseudo_dice_ema=1.0 - 0.1 * t.current_epoch)

    def remember_weights():
        last.update({k: v.clone() for k, v in t.network.state_dict().items()})
        end_of_epoch()
    t.on_validation_epoch_end, t.on_epoch_end = falling_scores, remember_weights
    t.run_training()
    fold = os.path.join(dataset_2d.model_folder("nnUNetTrainerMTL"), "fold_3")
    history = json.load(open(os.path.join(fold, "mtl_progress.json")))
    assert [h["epoch"] for h in history] == [0, 1]
    state = json.load(open(os.path.join(fold, "checkpoint_final_mtl.json")))
    assert state["stopped_early"] and state["finished"] and state["best_epoch"] == 0 == state["final_weights_epoch"]
    final = torch.load(os.path.join(fold, "checkpoint_final.pth"), weights_only=False)["network_weights"]
    best = torch.load(os.path.join(fold, "checkpoint_best.pth"), weights_only=False)["network_weights"]
    assert all(torch.equal(final[k], best[k]) for k in best)
    assert any(not torch.equal(final[k], last[k]) for k in final), "final must not be the last epoch's weights"

    again = _trainer(dataset_2d, 3, continue_training=True, **knobs)
    steps = []
    step = again.train_step
    again.train_step = lambda batch: steps.append(1) or step(batch)
    again.run_training()
    assert steps == [] and len(json.load(open(os.path.join(fold, "mtl_progress.json")))) == 2
    final2 = torch.load(os.path.join(fold, "checkpoint_final.pth"), weights_only=False)["network_weights"]
    assert all(torch.equal(final2[k], best[k]) for k in best)


def test_schedule_and_patience_follow_the_epoch_budget(dataset_2d):
    t = _trainer(dataset_2d, 0, num_epochs=500, warmup_epochs=None, ramp_epochs=None, heads_train_encoder=True)
    assert t.schedule_lengths == {"warmup_epochs": 10, "ramp_epochs": 15, "early_stopping_patience": 50}
    # by default (heads on detached features) the U-Net trains its whole budget, as stock's: no early stop
    t = _trainer(dataset_2d, 0, num_epochs=500, warmup_epochs=None, ramp_epochs=None)
    assert t.schedule_lengths == {"warmup_epochs": 10, "ramp_epochs": 15, "early_stopping_patience": None}
    t = _trainer(dataset_2d, 0, num_epochs=500, warmup_epochs=None, ramp_epochs=7, early_stopping_patience=3)
    assert t.schedule_lengths == {"warmup_epochs": 10, "ramp_epochs": 7, "early_stopping_patience": 3}


def test_optimizer_choice_and_head_learning_rate(dataset_2d):
    t = _trainer(dataset_2d, 0)  # the default: nnU-Net's SGD for the U-Net, its own lr for the heads
    t.initialize()
    unet_group, head_group = t.optimizer.param_groups
    assert isinstance(t.optimizer, torch.optim.SGD) and t.optimizer.defaults["nesterov"]
    assert unet_group["lr"] == pytest.approx(1e-2) and head_group["lr"] == pytest.approx(1e-3)
    assert {id(p) for p in head_group["params"]} == {id(p) for p in t.network.heads.parameters()}
    t.lr_scheduler.step(t.num_epochs // 2)
    assert head_group["lr"] / unet_group["lr"] == pytest.approx(0.1)
    t = _trainer(dataset_2d, 0, optimizer_name="adamw")  # the seed design, still an option
    t.initialize()
    assert isinstance(t.optimizer, torch.optim.AdamW) and t.optimizer.param_groups[1]["lr"] == pytest.approx(1e-4)


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


def test_an_unknown_knob_in_the_environment_is_one_line_under_nnunet_train(dataset_2d, monkeypatch, capsys):
    """Issue 26: NNUNET_MTL_OVERRIDES with a misspelt knob ends nnUNetv2_train's trainer lookup with one line and
    exit status 2, not a traceback."""
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunet_mtl.training.knobs import ENV_VAR
    monkeypatch.setenv(ENV_VAR, '{"num_epoch": 5}')
    with pytest.raises(SystemExit) as stop:
        get_trainer_from_args(str(dataset_2d.id), dataset_2d.configuration, 0, "nnUNetTrainerMTL", dataset_2d.plans,
                              device=torch.device("cpu"))
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("nnUNetTrainerMTL: ") and "unknown knob" in err[-1] and "num_epoch" in err[-1]


def test_mask_pooling_variant_trains_validates_and_predicts_whole_cases(dataset_2d):
    trainer = make_trainer(dataset_2d, "nnUNetTrainerMTLMaskPooling", fold=4)
    head = trainer.network.heads["finding"]
    assert head.read_config["pools"] == ["foreground", "global"]
    assert head.fc.in_features == 2 * trainer.network.encoder.output_channels[-1]
    calls = []
    hook = trainer.network.encoder.register_forward_hook(lambda *a: calls.append(1))
    trainer.train_step(next(trainer.dataloader_train))
    hook.remove()
    assert len(calls) == 1
    folder = train(dataset_2d, "nnUNetTrainerMTLMaskPooling", 4, num_epochs=1, num_iterations_per_epoch=2,
                   num_val_iterations_per_epoch=1)
    rows = open(os.path.join(folder, "fold_4", "validation", "predictions.csv")).read().splitlines()
    assert len(rows) > 1
    for r in rows[1:]:
        assert abs(sum(float(v) for v in r.split(",")[2:4]) - 1) < 1e-5


def test_measures_variant_reads_the_segmentations_measurements_in_training(dataset_2d):
    """The heads of nnUNetTrainerMTLMeasures read the bottleneck's global pool and, per predicted structure, its
    volume, fraction and the intensity inside (one channel), in a training step."""
    trainer = make_trainer(dataset_2d, "nnUNetTrainerMTLMeasures", fold=4)
    head = trainer.network.heads["finding"]
    assert head.read_config["pools"] == ["global", "measures"]
    structures = trainer.label_manager.num_segmentation_heads - 1
    assert head.fc.in_features == trainer.network.encoder.output_channels[-1] + structures * (2 + 2 * 1)
    before = head.fc.weight.detach().clone()
    trainer.train_step(next(trainer.dataloader_train))
    assert not torch.equal(before, head.fc.weight) and torch.isfinite(head.feature_scale).all()


def test_recipe_seed_reaches_the_trainer_through_stock_overrides(dataset_2d):
    """NNUNET_MTL_OVERRIDES {"recipe": "seed"} (what stock nnUNetv2_train reads): AdamW 1e-4, 20 + 30 epochs of
    schedule, 500 epochs, patience 100, the heads training the encoder."""
    from nnunetv2.run.run_training import get_trainer_from_args
    from nnunet_mtl.training.knobs import knob_overrides
    with knob_overrides(recipe="seed"):
        t = get_trainer_from_args(str(dataset_2d.id), dataset_2d.configuration, 0, "nnUNetTrainerMTL",
                                  dataset_2d.plans, device=torch.device("cpu"))
    assert t.num_epochs == 500 and t.encoder_trained_by_heads
    assert t.schedule_lengths == {"warmup_epochs": 20, "ramp_epochs": 30, "early_stopping_patience": 100}
    assert (t.schedule.weights(0)[1], t.schedule.weights(50)[1]) == pytest.approx((0.1, 0.5))
    t.initialize()
    assert isinstance(t.optimizer, torch.optim.AdamW) and t.optimizer.defaults["weight_decay"] == pytest.approx(3e-5)
    assert [g["initial_lr"] for g in t.optimizer.param_groups] == pytest.approx([1e-4, 1e-4])
