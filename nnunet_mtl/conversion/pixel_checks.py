"""Checks on what the pixels and mask values say, run before anything is written.

Conversion used to accept whatever the files held: a 0/255 mask became 256 labels, one stray
value 7 in a 0/1/2 mask added four phantom structures, NaN images trained into NaN losses.
Each check here either refuses with the file named or says once what it decided.
"""
from __future__ import annotations

import logging
from typing import Dict, Iterable, Mapping, Optional, Set

import numpy as np

from nnunet_mtl.conversion.masks import ConversionError

log = logging.getLogger(__name__)

BINARY_255 = {255: 1}  # the value map for masks that store their one foreground label as 255


def check_finite(arr: np.ndarray, path: str, what: str = "image") -> None:
    """Refuse NaN or infinite pixels, naming the file and how many there are."""
    arr = np.asarray(arr)
    if arr.dtype.kind not in "fc":
        return
    bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
    if bad:
        raise ConversionError(f"{path}: {what} has {bad} NaN or infinite pixel value(s); "
                              f"fix or mask them before conversion")


def check_stored_finite(path: str, what: str = "image") -> None:
    """NaN/inf stored in a float NIfTI file: SimpleITK (and so nnU-Net) reads them as 0, silently, so
    the check reads the stored values with nibabel. Other formats keep NaN and are checked by ``check_finite``."""
    if not path.lower().endswith((".nii", ".nii.gz")):
        return
    import nibabel
    try:
        img = nibabel.load(path)
    except Exception:  # unreadable files are reported by the SimpleITK readers with their own line
        return
    if np.dtype(img.get_data_dtype()).kind not in "fc":
        return
    check_finite(np.asanyarray(img.dataobj), path, what)


def is_constant(arrays: Iterable[np.ndarray]) -> bool:
    """True when every pixel of every channel has one value (a blank or saturated image)."""
    lo, hi = np.inf, -np.inf
    for a in arrays:
        a = np.asarray(a)
        if a.size:
            lo, hi = min(lo, float(a.min())), max(hi, float(a.max()))
    return lo == hi


def binary_255_map(values_per_mask: Mapping[str, Set[int]],
                   declared: Optional[Mapping[str, int]]) -> Optional[Dict[int, int]]:
    """``{255: 1}`` when the masks are binary with the foreground stored as 255 (some may use 1), else None.

    Decided per dataset: every mask holds only {0, 1} or only {0, 255}, at least one holds 255, and the
    declared labels (if any) have exactly one foreground label, 1. Anything else is left to the label checks."""
    if not any(255 in v for v in values_per_mask.values()):
        return None
    if any(not (v <= {0, 1} or v <= {0, 255}) for v in values_per_mask.values()):
        return None
    if declared is not None and set(int(x) for x in declared.values()) != {0, 1}:
        return None
    return dict(BINARY_255)


def apply_value_map(arr: np.ndarray, value_map: Optional[Mapping[int, int]]) -> np.ndarray:
    if not value_map:
        return arr
    lut = np.arange(256, dtype=np.uint8)
    for old, new in value_map.items():
        lut[int(old)] = int(new)
    return lut[np.asarray(arr, dtype=np.uint8)]


def check_consecutive(values_per_mask: Mapping[str, Set[int]], mask_paths: Mapping[str, str]) -> None:
    """Without declared labels, the mask values of all cases together must be 0..N without gaps.

    A gap means a value no other case explains (one stray 7 in 0/1/2 masks); nnU-Net would get
    phantom labels 3..7. The error names the first case holding a value above the gap."""
    union = set().union(*values_per_mask.values()) if values_per_mask else set()
    if not union:
        return
    missing = sorted(set(range(max(union) + 1)) - union)
    if not missing:
        return
    gap = missing[0]
    stray = sorted(v for v in union if v > gap)
    holders = [cid for cid in sorted(values_per_mask) if values_per_mask[cid] & set(stray)]
    cid = holders[0]
    values = sorted(values_per_mask[cid] & set(stray))
    others = f" ({len(holders) - 1} more case(s) too)" if len(holders) > 1 else ""
    raise ConversionError(
        f"{mask_paths[cid]}: mask of case {cid!r} has label value(s) {values}{others} but no mask uses "
        f"{gap}; without declared labels the mask values must run 0..N without gaps (here 0..{gap - 1}); "
        f"declare the labels (--label_names or the description's \"labels\") if {values} are real structures")


def summarise_map(value_map: Mapping[int, int], n_masks: int) -> str:
    pairs = ", ".join(f"{k}->{v}" for k, v in sorted(value_map.items()))
    return f"{n_masks} binary mask(s) store the foreground as 255: read as 0/1 ({pairs})"

