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
import re
from collections import Counter
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from nnunet_mtl.dataset_spec import DATASET_JSON_KEY, DatasetSpec
from nnunet_mtl.targets import TargetSpec

logger = logging.getLogger(__name__)

LATERAL_KEY = "lateral_pairs"
ORIENTATION_AWARE_TRAINER = "nnUNetTrainerMTLOrientationAware"
OBLIQUE_WARNING_COSINE = 0.8  # below this the "LR axis" is ~37 deg or more off world x

_SEP = r"[_\-\s]"
# (pattern, side group, stem group); word forms first so "left_l" is not read as side "l"
_SIDE_PATTERNS = [re.compile(p, re.IGNORECASE) for p in (
    rf"^(?P<side>left|right){_SEP}+(?P<stem>.+)$",
    rf"^(?P<stem>.+?){_SEP}+(?P<side>left|right)$",
    rf"^(?P<stem>.+?){_SEP}+(?P<side>l|r)$",
    rf"^(?P<side>l|r){_SEP}+(?P<stem>.+)$",
)]


class LateralPairError(ValueError):
    """A lateral-pair declaration that cannot be used; the message names the culprit."""


Pair = Tuple[str, str]


# ------------------------------------------------------------------------------------- label names
def _side_and_stem(name: str) -> Optional[Tuple[str, str]]:
    for pattern in _SIDE_PATTERNS:
        m = pattern.match(name.strip())
        if m:
            return m.group("side")[0].lower(), re.sub(f"{_SEP}+", "_", m.group("stem").lower())
    return None


def detect_lateral_pairs(labels: Mapping[str, object]) -> List[Pair]:
    """(left, right) label names that look like one structure's two sides, from the names alone.

    Pairs by the name without its side word (``left_lung`` ~ ``lung_r``); a stem with more
    than one candidate on a side is skipped rather than guessed."""
    sides: Dict[str, Dict[str, List[str]]] = {}
    for name in labels:
        parsed = _side_and_stem(str(name))
        if parsed:
            side, stem = parsed
            sides.setdefault(stem, {"l": [], "r": []})[side].append(str(name))
    pairs = []
    for stem in sorted(sides):
        lefts, rights = sides[stem]["l"], sides[stem]["r"]
        if len(lefts) == 1 and len(rights) == 1:
            pairs.append((lefts[0], rights[0]))
    return pairs


def lateral_pairs(description: DatasetSpec, source: str = "dataset.json") -> List[Pair]:
    """The pairs the dataset declares (``mtl.lateral_pairs``), checked against its labels."""
    labels = description.labels
    pairs, seen = [], set()
    for left, right in description.lateral_pairs:
        for name in (left, right):
            if name not in labels:
                raise LateralPairError(f"{source}: lateral pair names label {name!r}, which is not in its "
                                       f"'labels' ({sorted(labels)})")
            if name in seen:
                raise LateralPairError(f"{source}: label {name!r} appears in more than one lateral pair")
            seen.add(name)
        if left == right:
            raise LateralPairError(f"{source}: lateral pair [{left!r}, {right!r}] names the same label twice")
        pairs.append((left, right))
    return pairs


def suggestion(pairs: Sequence[Pair]) -> str:
    """The dataset.json line a user would add to declare detected pairs."""
    body = ", ".join(f'["{l}", "{r}"]' for l, r in pairs)
    return f'add "{LATERAL_KEY}": [{body}] to the "{DATASET_JSON_KEY}" block of dataset.json'


def pairs_in_force(description: DatasetSpec, use_detected: bool = False) -> Tuple[List[Pair], str]:
    """(pairs to act on, one-line message): declared pairs, else detected ones if ``use_detected``."""
    declared = lateral_pairs(description)
    if declared:
        return declared, f"lateral label pairs declared in dataset.json: {_fmt(declared)}"
    detected = detect_lateral_pairs(description.labels)
    if not detected:
        return [], "no lateralised labels declared or detected"
    if use_detected:
        return detected, f"lateral label pairs detected from label names (not declared): {_fmt(detected)}"
    return [], (f"label names look lateralised ({_fmt(detected)}) but no pairs are declared, so the "
                f"left-right axis is still mirrored; to stop that, {suggestion(detected)}")


def _fmt(pairs: Sequence[Pair]) -> str:
    return ", ".join(f"{l}<->{r}" for l, r in pairs)


def label_value_pairs(description: DatasetSpec, pairs: Sequence[Pair]) -> List[Tuple[int, int]]:
    """Names -> integer label values; region-based labels (lists) cannot be swapped voxel-wise."""
    labels = description.labels
    out = []
    for left, right in pairs:
        values = [labels[left], labels[right]]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            raise LateralPairError(f"dataset.json: lateral pair {left!r}/{right!r} uses region labels {values}; "
                                   f"label swapping needs plain integer labels")
        out.append((values[0], values[1]))
    return out


_SIDE_WORD = re.compile(rf"(^|{_SEP})(left|right)($|{_SEP})", re.IGNORECASE)


def lateral_image_targets(targets: TargetSpec) -> List[str]:
    """Image-level targets whose name or class names say left/right (e.g. classes "left", "right"):
    a label-swapping mirror would leave them unswapped, i.e. wrong on every flipped sample."""
    out = []
    for target in targets:
        words = [target.name] + list(target.classes)
        if any(_SIDE_WORD.search(w) for w in words):
            out.append(target.name)
    return out


def choose_trainer_for(description: DatasetSpec, base: str = "nnUNetTrainerMTL") -> Tuple[str, str]:
    """(trainer name, message) for the pipeline: the orientation-aware trainer (which acts on declared
    and on detected pairs) when lateral pairs are declared or detected."""
    declared = lateral_pairs(description)
    if declared:
        return ORIENTATION_AWARE_TRAINER, (f"lateralised labels ({_fmt(declared)}): training with "
                                           f"{ORIENTATION_AWARE_TRAINER}, which never mirrors the left-right axis")
    detected = detect_lateral_pairs(description.labels)
    if detected:
        return ORIENTATION_AWARE_TRAINER, (f"label names look lateralised ({_fmt(detected)}): training with "
                                           f"{ORIENTATION_AWARE_TRAINER}, which never mirrors the left-right axis; "
                                           f"to make it explicit for every trainer: {suggestion(detected)}")
    return base, f"no lateralised labels: training with {base}"


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
