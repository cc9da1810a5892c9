"""Lateral label pairs: detection, declaration, the left-right axis (2D and non-RAS 3D) and the
orientation-aware / label-swapping trainers inside real nnU-Net planning and preprocessing."""
import json
import os

import numpy as np
import pytest
import torch
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTransform

from nnunet_mtl.dataset_spec import DatasetSpec
from nnunet_mtl.conversion.nnunet_raw import write_raw_dataset
from nnunet_mtl.conversion.lateral_pairs import (LateralPairError, choose_trainer_for, detect_lateral_pairs,
                                                lateral_image_targets, lateral_pairs)
from nnunet_mtl.training.orientation import decide, lr_axis_from_direction, mirror_axes_without_lr
from nnunet_mtl.planning import plan_and_preprocess
from nnunet_mtl.synthetic import pancreas_cases, radiograph_cases, radiograph_labels
from nnunet_mtl.targets import TargetSpec, TargetSpecError
from nnunet_mtl.training.label_swap_mirror import LabelSwapMirrorTransform
from tests.helpers import TINY, TinyDataset, make_trainer

PAIRS = [["left_lung", "right_lung"]]
# numpy axis 0 points along world x, axis 1 along y, axis 2 along z (columns = sitk index axes x, y, z)
PERMUTED_DIRECTION = (0.0, 0.0, 1.0,
                      0.0, 1.0, 0.0,
                      1.0, 0.0, 0.0)


def _dataset(paths, dataset_id, name, cases, table, labels, channels, configuration, shrink, extra_mtl):
    raw = write_raw_dataset(paths["nnUNet_raw"], dataset_id, name, cases, table, labels, channels,
                            extra_mtl=extra_mtl)
    plans = plan_and_preprocess(dataset_id, "plain", (configuration,), shrink=shrink, num_processes=1,
                                verify_integrity=False)  # one worker, no integrity pool: half the wall time here
    folder = os.path.basename(raw)
    return TinyDataset(dataset_id, folder, configuration, plans, raw,
                       os.path.join(paths["nnUNet_preprocessed"], folder), paths["nnUNet_results"])


@pytest.fixture(scope="module")
def lateral_2d(nnunet_paths):
    cases, table = radiograph_cases(6, lateral=True, seed=3)
    return _dataset(nnunet_paths, 911, "LateralCXR", cases, table, radiograph_labels(True),
                    {"0": "rescale_to_0_1"}, "2d", TINY["2d"], {"lateral_pairs": PAIRS})


@pytest.fixture(scope="module")
def non_ras_3d(nnunet_paths):
    """Numpy axis 0 is world x; the coarse axis is numpy 1, so transpose_forward = [1, 0, 2] and the
    LR axis after transposition is 1: neither "last axis" nor "untransposed axis 0"."""
    cases, table = pancreas_cases(3, shape=(20, 12, 24), spacing=(1.0, 3.0, 1.0), seed=1)
    for c in cases:
        c.direction = PERMUTED_DIRECTION
        side = np.zeros_like(c.mask)
        side[: c.mask.shape[0] // 2] = 2   # low world x: patient right (LPS x grows to the left)
        side[c.mask.shape[0] // 2:] = 1
        c.mask = np.where(c.mask > 0, side, 0).astype(np.uint8)
    labels = {"background": 0, "left_part": 1, "right_part": 2}
    return _dataset(nnunet_paths, 912, "NonRAS", cases, table, labels, {"0": "CT"}, "3d_fullres", None,
                    {"lateral_pairs": [["left_part", "right_part"]]})


def _trainer_without_init(ds: TinyDataset, trainer_cls, dataset_json=None):
    """A trainer object as nnU-Net builds it, without dataloaders (enough to configure augmentation)."""
    with open(os.path.join(ds.preprocessed_folder, ds.plans + ".json")) as f:
        plans = json.load(f)
    dj = dataset_json or json.load(open(os.path.join(ds.preprocessed_folder, "dataset.json")))
    plans["continue_training"] = False
    return trainer_cls(plans, ds.configuration, 0, dj, torch.device("cpu"))


def _mirror_steps(pipeline):
    return [t for t in pipeline.transforms if isinstance(t, (MirrorTransform, LabelSwapMirrorTransform))]


# ----------------------------------------------------------------------------------------- names
def test_detection_finds_left_right_names_in_every_spelling():
    labels = {"background": 0, "left_lung": 1, "Right_Lung": 2, "kidney_L": 3, "kidney_R": 4,
              "l_hand": 5, "r_hand": 6, "eye_left": 7, "eye_right": 8, "heart": 9, "liver": 10, "left_only": 11}
    assert detect_lateral_pairs(labels) == [("eye_left", "eye_right"), ("l_hand", "r_hand"),
                                            ("kidney_L", "kidney_R"), ("left_lung", "Right_Lung")]
    assert detect_lateral_pairs({"background": 0, "lung": 1, "heart": 2, "liver_lobe": 3}) == []


def _described(labels, **block):
    """A DatasetSpec as conversion writes it: one target, no cases, plus the given mtl keys."""
    mtl = {"targets": [{"name": "finding", "kind": "classification", "classes": ["absent", "present"]}], **block}
    return DatasetSpec.from_dataset_json({"labels": labels, "mtl": mtl})


def test_declared_pairs_are_validated_against_labels():
    assert lateral_pairs(_described(radiograph_labels(True), lateral_pairs=PAIRS)) == [("left_lung", "right_lung")]
    with pytest.raises(LateralPairError, match="'right_lungs'.*dataset.json|dataset.json.*'right_lungs'"):
        lateral_pairs(_described(radiograph_labels(True), lateral_pairs=[["left_lung", "right_lungs"]]))
    with pytest.raises(TargetSpecError, match="must be"):
        _described(radiograph_labels(True), lateral_pairs=[["left_lung"]])


def test_choose_trainer_for_declared_detected_and_plain_labels():
    declared = _described(radiograph_labels(True), lateral_pairs=PAIRS)
    detected = _described(radiograph_labels(True))
    plain = _described(radiograph_labels(False))
    assert choose_trainer_for(declared)[0] == "nnUNetTrainerMTLOrientationAware"
    name, message = choose_trainer_for(detected)
    assert name == "nnUNetTrainerMTLOrientationAware" and '"lateral_pairs"' in message
    assert choose_trainer_for(plain, base="nnUNetTrainerMTLMultiScale")[0] == "nnUNetTrainerMTLMultiScale"


def test_lateral_image_targets_are_found_for_the_label_swap_guard():
    targets = [{"name": "finding", "kind": "classification", "classes": ["absent", "present"]},
               {"name": "side", "kind": "classification", "classes": ["none", "Left", "right"]},
               {"name": "left_effusion", "kind": "classification", "classes": ["no", "yes"]},
               {"name": "cleft", "kind": "regression"}]
    assert lateral_image_targets(TargetSpec.from_json(targets)) == ["side", "left_effusion"]


def test_undeclared_lateral_names_change_nothing_but_are_reported():
    decision = decide(_described(radiograph_labels(True)), "/nonexistent", (0, 1, 2), 2)
    assert not decision.active and "left_lung<->right_lung" in decision.message and "lateral_pairs" in decision.message


# ----------------------------------------------------------------------------------------- axes
def test_mirror_axes_without_lr():
    assert mirror_axes_without_lr((0, 1, 2), 1) == (0, 2)
    assert mirror_axes_without_lr((0, 1), None) == (0, 1)
    assert mirror_axes_without_lr((1,), 1) is None and mirror_axes_without_lr(None, 0) is None


def test_lr_axis_follows_direction_and_transpose_not_array_position():
    assert lr_axis_from_direction(np.eye(3).ravel()) == (2, 1.0)  # RAS/LPS-aligned: numpy x is last
    assert lr_axis_from_direction(PERMUTED_DIRECTION)[0] == 0
    assert lr_axis_from_direction(PERMUTED_DIRECTION, transpose_forward=(1, 0, 2))[0] == 1
    c, s = np.cos(np.radians(20)), np.sin(np.radians(20))
    oblique = np.array([[-s, 0, c], [0, 1, 0], [c, 0, s]])  # PERMUTED_DIRECTION tilted about world y
    assert lr_axis_from_direction(oblique.ravel())[0] == 0  # 20 deg tilt: still numpy axis 0


def test_non_ras_3d_volume_gets_the_world_x_axis(non_ras_3d):
    from nnunet_mtl.training.trainers.nnUNetTrainerMTLOrientationAware import nnUNetTrainerMTLOrientationAware
    trainer = _trainer_without_init(non_ras_3d, nnUNetTrainerMTLOrientationAware)
    assert list(trainer.plans_manager.transpose_forward) == [1, 0, 2]
    *_, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert trainer.lateral.lr_axis == 1
    assert mirror_axes == (0, 2) and trainer.inference_allowed_mirroring_axes == (0, 2)


# ----------------------------------------------------------------------------------------- 2D trainers
def test_orientation_aware_never_flips_left_right(lateral_2d):
    trainer = make_trainer(lateral_2d, "nnUNetTrainerMTLOrientationAware")
    assert trainer.lateral.lr_axis == 1 and trainer.inference_allowed_mirroring_axes == (0,)
    pipeline = trainer.dataloader_train.data_loader.transforms
    steps = _mirror_steps(pipeline)
    assert [type(s) for s in steps] == [MirrorTransform] and tuple(steps[0].allowed_axes) == (0,)
    ramp = torch.arange(16, dtype=torch.float32).repeat(16, 1)[None]   # grows left to right
    for _ in range(200):
        out = {"image": ramp.clone(), "segmentation": torch.zeros_like(ramp)}
        for step in steps:
            out = step(**out)
        assert torch.all(out["image"][0, :, 1:] > out["image"][0, :, :-1])
    assert trainer.train_step(next(trainer.dataloader_train))["loss"] is not None


def test_label_swap_variant_maps_left_to_right_on_a_flipped_sample(lateral_2d):
    trainer = make_trainer(lateral_2d, "nnUNetTrainerMTLLabelSwapMirror")
    pipeline = trainer.dataloader_train.data_loader.transforms
    kinds = [type(t) for t in pipeline.transforms]
    swap_at = kinds.index(LabelSwapMirrorTransform)
    assert swap_at < kinds.index(RemoveLabelTransform)
    swap = pipeline.transforms[swap_at]
    assert swap.axis == 1 and swap.label_pairs == [(1, 2)]
    assert tuple(_mirror_steps(pipeline)[0].allowed_axes) == (0,) and trainer.inference_allowed_mirroring_axes == (0,)

    seg = torch.zeros(1, 4, 6)
    seg[0, :, 4:] = 1   # left lung on image right (radiological view)
    seg[0, :, :2] = 2   # right lung on image left
    seg[0, 0, 2] = 3    # heart, not lateral
    img = torch.arange(24, dtype=torch.float32).reshape(1, 4, 6)
    out = LabelSwapMirrorTransform(1, [(1, 2)], p=1.0)(image=img.clone(), segmentation=seg.clone())
    assert torch.equal(out["image"], torch.flip(img, (2,)))
    assert torch.all(out["segmentation"][0, :, 4:] == 1) and torch.all(out["segmentation"][0, :, :2] == 2)
    assert out["segmentation"][0, 0, 3] == 3   # flipped, not swapped
    ds = LabelSwapMirrorTransform(1, [(1, 2)], p=1.0)(segmentation=[seg.clone(), seg[:, ::2, ::2].clone()])
    assert torch.all(ds["segmentation"][1][0, :, 2:] == 1)
    assert trainer.train_step(next(trainer.dataloader_train))["loss"] is not None


def test_without_declaration_the_base_trainer_keeps_mirroring_and_logs_suggestion(lateral_2d):
    from nnunet_mtl.training.trainers.nnUNetTrainerMTL import nnUNetTrainerMTL
    from nnunet_mtl.training.trainers.nnUNetTrainerMTLOrientationAware import nnUNetTrainerMTLOrientationAware
    dj = lateral_2d.dataset_json
    del dj["mtl"]["lateral_pairs"]
    trainer = _trainer_without_init(lateral_2d, nnUNetTrainerMTL, dj)
    *_, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert mirror_axes == (0, 1) and trainer.inference_allowed_mirroring_axes == (0, 1)
    assert '"lateral_pairs"' in open(trainer.log_file).read()
    aware = _trainer_without_init(lateral_2d, nnUNetTrainerMTLOrientationAware, dj)  # acts on detected names
    *_, mirror_axes = aware.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert mirror_axes == (0,) and aware.inference_allowed_mirroring_axes == (0,)


def test_declared_pairs_stop_lr_mirroring_in_the_base_trainer(lateral_2d):
    from nnunet_mtl.training.trainers.nnUNetTrainerMTL import nnUNetTrainerMTL
    trainer = _trainer_without_init(lateral_2d, nnUNetTrainerMTL)
    rotation, *_, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert mirror_axes == (0,) and trainer.inference_allowed_mirroring_axes == (0,)
    # a vertical flip plus a ~180 degree turn would be a left-right flip: rotation is capped at 15 degrees
    assert max(abs(r) for r in rotation) <= np.radians(15) + 1e-9


def test_no_mirroring_variant(lateral_2d):
    from nnunet_mtl.training.trainers.nnUNetTrainerMTLNoMirroring import nnUNetTrainerMTLNoMirroring
    trainer = _trainer_without_init(lateral_2d, nnUNetTrainerMTLNoMirroring)
    *_, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    assert mirror_axes is None and trainer.inference_allowed_mirroring_axes is None
