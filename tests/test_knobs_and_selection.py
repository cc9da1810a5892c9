"""Knobs declared once (defaults, env overrides, pipeline flags) and checkpoint selection rules."""
import argparse
import math
import os

import pytest

from nnunet_mtl.training import knobs
from nnunet_mtl.training import selection


def test_every_knob_has_one_declaration_and_flags_come_from_it():
    names = [k.name for k in knobs.KNOBS]
    assert len(names) == len(set(names))
    parser = argparse.ArgumentParser()
    knobs.add_knob_arguments(parser)
    flags = set(parser._option_string_actions)
    for flag in ("--epochs", "--iterations_per_epoch", "--val_iterations_per_epoch", "--lr", "--warmup_epochs",
                 "--ramp_epochs", "--head_weight_start", "--head_weight_end", "--class_weight_smoothing",
                 "--patience", "--weight_decay", "--class_weight_power", "--selection_seg_weight", "--optimizer",
                 "--head_lr"):
        assert flag in flags, flag
    args = parser.parse_args(["--epochs", "7", "--optimizer", "sgd", "--patience", "3"])
    assert knobs.knobs_from_args(args) == {"num_epochs": 7, "optimizer_name": "sgd", "early_stopping_patience": 3}
    with pytest.raises(SystemExit):
        parser.parse_args(["--optimizer", "adam"])


def test_overrides_are_checked_and_restored():
    assert knobs.read_overrides({knobs.ENV_VAR: '{"num_epochs": "5", "head_lr": 0.001}'}) == \
        {"num_epochs": 5, "head_lr": 0.001}
    with pytest.raises(ValueError, match="unknown knob"):
        knobs.read_overrides({knobs.ENV_VAR: '{"num_epoch": 5}'})
    with pytest.raises(ValueError, match="optimizer_name must be one of"):
        knobs.encode_overrides(optimizer_name="adam")
    before = os.environ.get(knobs.ENV_VAR)
    with knobs.knob_overrides(num_epochs=3, initial_lr=None):
        assert knobs.read_overrides() == {"num_epochs": 3}
    assert os.environ.get(knobs.ENV_VAR) == before


def test_apply_knobs_sets_defaults_and_overrides_win():
    class T:
        num_epochs = 1000
    t = T()
    knobs.apply_knobs(t, {knobs.ENV_VAR: '{"ramp_epochs": 4}'})
    assert t.num_epochs == 1000 and t.optimizer_name == "sgd" and t.weight_decay == 3e-5
    assert t.ramp_epochs == 4 and t.warmup_epochs is None
    assert knobs.resolve_lrs("adamw", None, None) == (1e-4, 1e-4)
    assert knobs.resolve_lrs("sgd", None, 1e-3) == (1e-2, 1e-3)
    assert knobs.resolve_lrs("sgd", None, None) == (1e-2, 1e-3)  # the default: nnU-Net's SGD, heads at 1e-3


def test_schedule_scales_with_the_budget_and_explicit_values_win():
    assert knobs.resolve_schedule(1000) == {"warmup_epochs": 20, "ramp_epochs": 30, "early_stopping_patience": 100}
    assert knobs.resolve_schedule(250) == {"warmup_epochs": 5, "ramp_epochs": 8, "early_stopping_patience": 25}
    assert knobs.resolve_schedule(10) == {"warmup_epochs": 1, "ramp_epochs": 1, "early_stopping_patience": 10}
    assert knobs.resolve_schedule(10, warmup_epochs=4, early_stopping_patience=2) == \
        {"warmup_epochs": 4, "ramp_epochs": 1, "early_stopping_patience": 2}


SEED = {"optimizer_name": "adamw", "initial_lr": 1e-4, "weight_decay": 3e-5, "warmup_epochs": 20, "ramp_epochs": 30,
        "head_weight_start": 0.1, "head_weight_end": 0.5, "class_weight_smoothing": 1.0, "class_weight_power": 1.0,
        "heads_train_encoder": True, "num_epochs": 500, "early_stopping_patience": 100}


def test_recipe_seed_fills_exactly_its_knobs_and_explicit_flags_win():
    parser = argparse.ArgumentParser()
    knobs.add_knob_arguments(parser)
    assert knobs.knobs_from_args(parser.parse_args(["--recipe", "seed"])) == SEED == knobs.recipe_knobs("seed")
    explicit = knobs.knobs_from_args(parser.parse_args(["--lr", "3e-4", "--recipe", "seed", "--patience", "7"]))
    assert explicit == {**SEED, "initial_lr": 3e-4, "early_stopping_patience": 7}
    demo = knobs.knobs_from_args(parser.parse_args(["--recipe", "seed", "--ramp_epochs", "2"]), knobs.DEMO_BUDGET)
    assert demo["num_epochs"] == 20 and demo["warmup_epochs"] == 3 and demo["ramp_epochs"] == 2
    assert demo["optimizer_name"] == "adamw"
    assert knobs.knobs_from_args(parser.parse_args([])) == {}
    with pytest.raises(SystemExit):
        parser.parse_args(["--recipe", "sead"])
    with pytest.raises(ValueError, match="unknown recipe 'sead'"):
        knobs.recipe_knobs("sead")
    # stock nnUNetv2_train: the recipe through NNUNET_MTL_OVERRIDES, knobs named beside it win
    env = {knobs.ENV_VAR: '{"recipe": "seed", "num_epochs": 50}'}
    assert knobs.read_overrides(env) == {**SEED, "num_epochs": 50}
    with pytest.raises(ValueError, match="unknown recipe"):
        knobs.read_overrides({knobs.ENV_VAR: '{"recipe": "fast"}'})


def _epoch(state, epoch, head, dice):
    return selection.update_selection(state, {"epoch": epoch, "head_score": head, "pseudo_dice_ema": dice}, 0.5, True)


def test_a_nan_score_never_becomes_the_best():
    state = selection.new_state()
    assert math.isnan(_epoch(state, 0, float("nan"), float("nan")))
    assert state["best_score"] is None and state["epochs_since_best"] == 1
    _epoch(state, 1, 0.2, 0.4)
    assert state["best_epoch"] == 1 and state["epochs_since_best"] == 0
    state2 = selection.new_state()
    _epoch(state2, 0, 0.5, float("nan"))   # a NaN Dice falls back to the head score
    assert state2["best_score"] == pytest.approx(0.5)


def test_final_weights_rule():
    state = selection.new_state()
    assert selection.final_weights(state, 3, None, None)[0] is None      # never a finite score: keep the last
    _epoch(state, 0, 0.9, 0.9)
    _epoch(state, 1, 0.1, 0.1)
    assert selection.final_weights(state, 1, {"w": 1}, None)[0] is None  # budget reached: nnU-Net's last epoch
    state["stopped_early"] = True
    weights, message = selection.final_weights(state, 1, {"w": 1}, None)
    assert weights == {"w": 1} and "best epoch 0" in message
    assert selection.final_weights(state, 0, {"w": 1}, None)[0] is None  # the last epoch was the best
