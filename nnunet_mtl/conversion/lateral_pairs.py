"""Lateralised label names: which labels are left/right pairs, declared in dataset.json or detected by name.

A dataset declares its pairs in ``dataset.json``::

    "mtl": {..., "lateral_pairs": [["left_lung", "right_lung"]]}

Undeclared names that say left/right are only *detected* and reported with a suggestion. What a trainer
does with the pairs (which array axis is left-right, not mirroring it) is ``training.orientation``.
"""
from __future__ import annotations

import re
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from nnunet_mtl.dataset_spec import DATASET_JSON_KEY, DatasetSpec
from nnunet_mtl.targets import TargetSpec

LATERAL_KEY = "lateral_pairs"
ORIENTATION_AWARE_TRAINER = "nnUNetTrainerMTLOrientationAware"

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
