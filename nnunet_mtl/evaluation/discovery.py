"""Finding cases on disk: mask files, their case ids, and which ground-truth subfolder holds them.

A folder holds masks ``CASE.<ending>`` directly (nnU-Net ``labelsTr`` style) and/or in class
subfolders (the pancreas challenge layout ``gt_dir/<class>/CASE.nii.gz``, images
``CASE_0000.nii.gz`` beside them). ``NAME_XXXX`` is an image, not a mask, when ``NAME`` itself is
there, so case ids that merely end in four digits still count.

Hidden files and folders (``.converted_inputs``, where the predictor keeps its converted copies of
PNG/JPEG inputs; ``.gt``; lock files) are never scanned. Predicted masks are read only from the
prediction folder itself: its subfolders (``explanations/`` with Grad-CAM maps) hold no predictions.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence, Tuple

from nnunet_mtl.evaluation.errors import EvaluationError
from nnunet_mtl.conversion.file_names import MASK_ENDINGS, has_channel_suffix, strip_channel, strip_ending


def case_id_of(filename: str) -> Optional[str]:
    """Case id of a mask-like file name (known ending, not hidden), else None."""
    if filename.startswith("."):
        return None
    return strip_ending(filename, MASK_ENDINGS)


def _visible(folder: str):
    return [n for n in sorted(os.listdir(folder)) if not n.startswith(".")]


def masks_in(folder: str) -> Dict[str, str]:
    """case -> path for the masks directly in ``folder`` (channel images of a present case skipped)."""
    found: Dict[str, str] = {}
    for name in _visible(folder):
        cid = case_id_of(name)
        if cid is not None and os.path.isfile(os.path.join(folder, name)):
            _add_case(found, cid, os.path.join(folder, name))
    return {c: p for c, p in found.items() if not (has_channel_suffix(c) and strip_channel(c) in found)}


def find_masks(folder: str, subfolders: bool = True) -> Tuple[Dict[str, str], Dict[str, str]]:
    """(case -> mask path, case -> subfolder name) over ``folder`` and (``subfolders``) its direct,
    non-hidden subfolders."""
    if not os.path.isdir(folder):
        raise EvaluationError(f"{folder}: folder not found")
    paths, groups = {}, {}
    for cid, path in masks_in(folder).items():
        _add_case(paths, cid, path)
    for entry in _visible(folder) if subfolders else ():
        if os.path.isdir(os.path.join(folder, entry)):
            for cid, path in masks_in(os.path.join(folder, entry)).items():
                _add_case(paths, cid, path)
                groups[cid] = entry
    if not paths:
        where = "" if subfolders else " directly in it (its subfolders are not read)"
        raise EvaluationError(f"{folder}: no mask files ({', '.join(MASK_ENDINGS)}) found{where}")
    return paths, groups


def find_predicted_masks(folder: str) -> Dict[str, str]:
    """case -> path of the predicted masks: the files directly in ``folder`` (nnU-Net's output layout)."""
    return find_masks(folder, subfolders=False)[0]


def _add_case(paths: Dict[str, str], cid: str, path: str) -> None:
    if cid in paths:
        raise EvaluationError(f"case {cid!r} has two mask files: {paths[cid]} and {path}")
    paths[cid] = path


def check_same_cases(reference: Sequence[str], other: Sequence[str], ref_name: str, other_name: str) -> None:
    """Raise naming the first case that only one of two sources has."""
    missing = sorted(set(reference) - set(other))
    if missing:
        raise EvaluationError(f"case {missing[0]!r} is in {ref_name} but not in {other_name}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    extra = sorted(set(other) - set(reference))
    if extra:
        raise EvaluationError(f"case {extra[0]!r} is in {other_name} but not in {ref_name}"
                              + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
