"""Lateralised labels and the body's left-right axis.

Mirroring along the left-right (LR) axis turns a left lung into a right one: with labels
named by side, nnU-Net's default mirroring teaches the network that either lung may be
"left" (measured on real radiographs: left lung Dice 0.68 -> 0.78 with mirroring off).
This module decides *whether* a dataset is lateralised and *which* array axis is LR, so
trainers can stop flipping that axis (or flip it and swap the paired labels).

A dataset declares its pairs in ``dataset.json``::

    "mtl": {..., "lateral_pairs": [["left_lung", "right_lung"]]}

Undeclared names that say left/right are only *detected* and reported with a suggestion.

The LR axis: world x in both LPS and RAS. For 3D data it is the array axis (nnU-Net's
(z, y, x) order after ``transpose_forward``) whose direction cosine is most aligned with
world x; for 2D images (radiographs, which carry no trustworthy direction) it is the
horizontal axis, i.e. the last patch axis.
"""
from __future__ import annotations

import glob
import logging
import os
import pickle
from collections import Counter
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from nnunet_mtl.conversion.lateral_pairs import LateralPairError, Pair, pairs_in_force
from nnunet_mtl.dataset_spec import DatasetSpec

logger = logging.getLogger(__name__)

OBLIQUE_WARNING_COSINE = 0.8  # below this the "LR axis" is ~37 deg or more off world x


# ------------------------------------------------------------------------------------- the LR axis
LATERAL_MAX_ROTATION = 15. / 360 * 2. * np.pi


def limit_rotation_for_lateral(rotation):
    """Cap nnU-Net's rotation range at +-15 deg when it exceeds +-90 deg (square 2D patches and
    dummy-2D 3D get +-180 deg): a flip along the other axis plus a ~180 deg turn is a left-right flip."""
    if isinstance(rotation, (tuple, list)) and len(rotation) == 2 and max(abs(float(r)) for r in rotation) > np.pi / 2:
        return (-LATERAL_MAX_ROTATION, LATERAL_MAX_ROTATION)
    return rotation


def mirror_axes_without_lr(mirror_axes: Optional[Sequence[int]], lr_axis: Optional[int]
                           ) -> Optional[Tuple[int, ...]]:
    """nnU-Net mirror axes minus the LR axis; None (nnU-Net's "no mirroring") when none remain."""
    if mirror_axes is None:
        return None
    kept = tuple(int(a) for a in mirror_axes if lr_axis is None or int(a) != int(lr_axis))
    return kept or None


def lr_axis_from_direction(direction: Sequence[float], transpose_forward: Sequence[int] = (0, 1, 2)
                           ) -> Tuple[int, float]:
    """(LR axis in nnU-Net's array order after ``transpose_forward``, |cosine| with world x).

    ``direction`` is SimpleITK's flattened row-major 3x3 matrix: column j is the world
    direction of index axis j, and sitk index axis j is numpy axis 2 - j."""
    d = np.asarray(direction, dtype=float).reshape(3, 3)
    x_alignment = [abs(d[0, 2 - a]) for a in range(3)]  # per numpy axis (z, y, x)
    numpy_axis = int(np.argmax(x_alignment))
    return list(transpose_forward).index(numpy_axis), float(x_alignment[numpy_axis])


def case_direction(properties: Mapping) -> Optional[np.ndarray]:
    """The 3x3 direction of a preprocessed case (SimpleITK or nibabel reader), or None for 2D images."""
    if "sitk_stuff" in properties:
        direction = np.asarray(properties["sitk_stuff"]["direction"], dtype=float)
        return direction.reshape(3, 3) if direction.size == 9 else None
    if "nibabel_stuff" in properties:  # affine columns: voxel axes i, j, k = numpy axes 2, 1, 0 after nnU-Net
        stuff = properties["nibabel_stuff"]
        affine = np.asarray(stuff.get("reoriented_affine", stuff["original_affine"]), dtype=float)[:3, :3]
        return affine / np.linalg.norm(affine, axis=0, keepdims=True)
    return None


def lr_patch_axis(properties: Sequence[Mapping], transpose_forward: Sequence[int], patch_dims: int
                  ) -> Tuple[Optional[int], str]:
    """(LR axis as a mirror axis of the training patch, or None if the patch has none; message).

    2D images: the horizontal axis. 3D volumes: the majority vote over cases of
    ``lr_axis_from_direction``; in a 2D configuration of 3D data the patch is a slice along
    array axis 0, so the LR axis shifts by one (or is absent when LR is the slicing axis)."""
    directions = [case_direction(p) for p in properties]
    if not directions:
        raise LateralPairError("no preprocessed case properties to read the image direction from; "
                               "run nnU-Net preprocessing first")
    if all(d is None for d in directions):
        return patch_dims - 1, f"2D images: left-right is the horizontal axis (mirror axis {patch_dims - 1})"
    votes = Counter()
    worst = 1.0
    for d in directions:
        if d is not None:
            axis, cosine = lr_axis_from_direction(d.ravel(), transpose_forward)
            votes[axis] += 1
            worst = min(worst, cosine)
    axis3d, n = votes.most_common(1)[0]
    msg = (f"left-right is array axis {axis3d} of (z, y, x) after transpose_forward {list(transpose_forward)} "
           f"(most aligned with world x in {n}/{sum(votes.values())} cases)")
    if len(votes) > 1:
        msg += f"; cases disagree: {dict(votes)}"
    if worst < OBLIQUE_WARNING_COSINE:
        msg += f"; some images are oblique (|cos| with world x down to {worst:.2f})"
    if patch_dims == 3:
        return axis3d, msg + f" -> mirror axis {axis3d}"
    if axis3d == 0:
        return None, msg + "; the 2D patches are slices across it, so no in-plane mirror axis is left-right"
    return axis3d - 1, msg + f" -> 2D patch mirror axis {axis3d - 1}"


def read_case_properties(preprocessed_folder: str, max_cases: int = 50) -> List[dict]:
    """The per-case property pickles nnU-Net writes beside each preprocessed case; an even sample
    of at most ``max_cases`` (they also hold foreground locations, so reading all can be slow)."""
    files = sorted(glob.glob(os.path.join(preprocessed_folder, "*.pkl")))
    files = files[::max(1, -(-len(files) // max_cases))]
    out = []
    for f in files:
        with open(f, "rb") as fh:
            out.append(pickle.load(fh))
    return out


@dataclass(frozen=True)
class LateralDecision:
    """What an orientation-aware trainer does: the pairs in force, the LR mirror axis, why."""
    pairs: Tuple[Pair, ...]
    lr_axis: Optional[int]
    message: str

    @property
    def active(self) -> bool:
        return bool(self.pairs) and self.lr_axis is not None


def decide(description: DatasetSpec, preprocessed_folder: str, transpose_forward: Sequence[int], patch_dims: int,
           use_detected: bool = False) -> LateralDecision:
    """The whole decision for a trainer, from what nnU-Net has on disk (no trainer needed)."""
    pairs, msg = pairs_in_force(description, use_detected)
    if not pairs:
        return LateralDecision((), None, msg)
    axis, axis_msg = lr_patch_axis(read_case_properties(preprocessed_folder), transpose_forward, patch_dims)
    return LateralDecision(tuple(pairs), axis, f"{msg}; {axis_msg}")
