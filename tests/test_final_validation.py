"""The trainer's final validation (``training.final_validation``, run by our engine): one sliding window per case
gives nnU-Net's masks, nnU-Net's summary.json and our heads' rows."""
import csv
import glob
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mtl.inference.predictor import nnUNetPredictorMTL
from tests.helpers import make_trainer

pytestmark = pytest.mark.timeout(600)


def _expected_encoder_forwards(trainer, keys) -> int:
    """Tiles x mirror passes of every case, counted with nnU-Net's own slicers."""
    tiling = nnUNetPredictor(tile_step_size=0.5, use_mirroring=True, device=torch.device("cpu"), allow_tqdm=False)
    tiling.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                                 trainer.dataset_json, "x", trainer.inference_allowed_mirroring_axes)
    patch = tuple(trainer.configuration_manager.patch_size)
    passes = 2 ** len(trainer.inference_allowed_mirroring_axes)
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, list(keys))
    total = 0
    for k in keys:
        spatial = dataset.load_case(k)[0].shape[1:]
        lead = len(spatial) - len(patch)
        padded = (*spatial[:lead], *[max(s, p) for s, p in zip(spatial[lead:], patch)])
        total += len(tiling._internal_get_sliding_window_slicers(padded)) * passes
    return total


def _masks(folder):
    return {os.path.basename(p): sitk.GetArrayFromImage(sitk.ReadImage(p))
            for p in sorted(glob.glob(os.path.join(folder, "*.nii.gz")))}


def _rows(folder):
    with open(os.path.join(folder, "predictions.csv")) as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


@pytest.fixture(scope="module")
def validated(dataset_2d):
    """A fold-1 trainer (initial weights) after its final validation, with the encoder forwards counted."""
    trainer = make_trainer(dataset_2d, fold=1)
    calls = []
    hook = trainer.network.encoder.register_forward_hook(lambda *a: calls.append(1))
    try:
        trainer.perform_actual_validation()
    finally:
        hook.remove()
    return trainer, len(calls)


def test_one_encoder_pass_per_tile_and_mirror_for_masks_and_heads(validated):
    trainer, n_calls = validated
    _, keys = trainer.do_split()
    assert n_calls == _expected_encoder_forwards(trainer, keys)
    folder = os.path.join(trainer.output_folder, "validation")
    for name in ("summary.json", "predictions.csv", "predictions.json", "mtl_summary.json"):
        assert os.path.isfile(os.path.join(folder, name)), name
    _, val_keys = trainer.do_split()
    rows = _rows(folder)
    assert sorted(rows) == sorted(val_keys) == sorted(keys)
    summary = json.load(open(os.path.join(folder, "mtl_summary.json")))
    assert summary["n_cases"] == len(val_keys) and summary["heads"] == "trained"
    assert len(json.load(open(os.path.join(folder, "summary.json")))["metric_per_case"]) == len(val_keys)


def test_validation_heads_equal_the_predictor_on_each_case(validated):
    """Each row belongs to its case: the predictor on that preprocessed case gives the same probabilities."""
    trainer, _ = validated
    rows = _rows(os.path.join(trainer.output_folder, "validation"))
    predictor = nnUNetPredictorMTL(tile_step_size=0.5, use_mirroring=True, device=torch.device("cpu"),
                                   perform_everything_on_device=False, allow_tqdm=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, "x", trainer.inference_allowed_mirroring_axes)
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, sorted(rows))
    trainer.set_deep_supervision_enabled(False)  # as during validation
    try:
        for key in dataset.identifiers:
            _, heads = predictor.predict_case(torch.from_numpy(np.asarray(dataset.load_case(key)[0][:])), key)
            got = [float(rows[key]["finding_prob_absent"]), float(rows[key]["finding_prob_present"])]
            assert np.allclose(got, heads.outputs["finding"], atol=1e-6), key
    finally:
        trainer.set_deep_supervision_enabled(True)


def test_masks_and_summary_are_stock(validated):
    """nnU-Net's own final validation of the same network writes the same masks and Dice."""
    trainer, _ = validated
    folder = os.path.join(trainer.output_folder, "validation")
    ours = _masks(folder)
    with open(os.path.join(folder, "summary.json")) as f:
        our_dice = json.load(f)["foreground_mean"]["Dice"]
    shutil.rmtree(folder)
    nnUNetTrainer.perform_actual_validation(trainer)  # stock, alone: its own predictor, no heads
    stock = _masks(folder)
    assert ours.keys() == stock.keys() and ours
    for name in ours:
        assert np.array_equal(ours[name], stock[name]), name
    with open(os.path.join(folder, "summary.json")) as f:
        assert json.load(f)["foreground_mean"]["Dice"] == our_dice
