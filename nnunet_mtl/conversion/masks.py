"""Mask checks shared by every input layout: integer labels, geometry that matches the image.

Masks from other tools often carry float labels (1.0000001) or headers that differ from the
image by rounding noise; nnU-Net then fails much later with an unhelpful error. Here tiny
differences are repaired and reported, real mismatches are refused with the case named.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

log = logging.getLogger(__name__)

GEOMETRY_KEYS = ("spacing", "origin", "direction")
DEFAULT_REL_TOL = 1e-4
MAX_LABEL = 255  # the raw writer stores masks as uint8


class ConversionError(ValueError):
    """Input that cannot be converted; the one-line message names the file and the problem.

    Defined here because every layout ends in the mask checks, so all converters import this module."""


@dataclass(frozen=True)
class Geometry:
    """Image grid in SimpleITK (x, y[, z]) order; ``known`` lists what the file format really stores
    (a PNG stores no spacing, a CR DICOM only spacing), so only those are compared."""
    size: tuple
    spacing: tuple
    origin: tuple
    direction: tuple
    known: frozenset = frozenset(GEOMETRY_KEYS)

    @classmethod
    def of(cls, img: sitk.Image, known: Iterable[str] = GEOMETRY_KEYS) -> "Geometry":
        return cls(tuple(img.GetSize()), tuple(img.GetSpacing()), tuple(img.GetOrigin()),
                   tuple(img.GetDirection()), frozenset(known))

    @property
    def numpy_spacing(self) -> tuple:
        """Spacing in numpy (z, y, x) / (y, x) order, as ``RawCase`` wants it."""
        return tuple(self.spacing[::-1])

    def apply_to(self, img: sitk.Image) -> sitk.Image:
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img


@dataclass
class ConversionReport:
    """What conversion repaired, so the user can see it instead of it happening silently."""
    rounded_voxels: Dict[str, int] = field(default_factory=dict)
    geometry_copied: Dict[str, str] = field(default_factory=dict)
    label_values: List[int] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)  # decisions taken once per dataset (colour, pairs)
    constant_images: List[str] = field(default_factory=list)
    n_train: int = 0
    n_test: int = 0

    def summary(self) -> str:
        lines = [f"converted {self.n_train} training and {self.n_test} test cases"] + list(self.notes)
        if self.rounded_voxels:
            total = sum(self.rounded_voxels.values())
            lines.append(f"rounded {total} non-integer mask voxels in {len(self.rounded_voxels)} case(s): "
                         + ", ".join(f"{k}={v}" for k, v in sorted(self.rounded_voxels.items())))
        if self.constant_images:
            shown = self.constant_images[:5] + ([f"{len(self.constant_images) - 5} more"]
                                                if len(self.constant_images) > 5 else [])
            lines.append(f"{len(self.constant_images)} constant image(s) (one value everywhere; check they are "
                         f"not blank): " + ", ".join(shown))
        if self.geometry_copied:
            lines.append(f"copied image geometry onto {len(self.geometry_copied)} file(s) with tiny differences: "
                         + ", ".join(sorted(self.geometry_copied)))
        return "\n".join(lines)


@dataclass
class ConversionResult:
    folder: str
    report: ConversionReport


def round_labels(arr: np.ndarray, case_id: str, path: str) -> tuple:
    """Mask values -> uint8 labels; returns (labels, number of voxels whose value changed)."""
    arr = np.asarray(arr)
    if arr.dtype.kind == "b":
        arr = arr.astype(np.uint8)
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)):
            raise ConversionError(f"{path}: mask of case {case_id!r} contains NaN or infinite values")
        rounded = np.rint(arr)
        changed = int(np.count_nonzero(rounded != arr))
    elif arr.dtype.kind in "iu":
        rounded, changed = arr, 0
    else:
        raise ConversionError(f"{path}: mask of case {case_id!r} has unsupported data type {arr.dtype}")
    lo, hi = (rounded.min(), rounded.max()) if rounded.size else (0, 0)
    if lo < 0 or hi > MAX_LABEL:
        raise ConversionError(f"{path}: mask of case {case_id!r} has labels outside 0..{MAX_LABEL} "
                              f"(min {lo}, max {hi})")
    return rounded.astype(np.uint8), changed


def _close(a: Sequence[float], b: Sequence[float], rtol: float, atol: float) -> bool:
    return bool(np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=rtol, atol=atol))


def compare_geometry(ref: Geometry, other: Geometry, case_id: str, path: str, what: str = "mask",
                     rel_tol: float = DEFAULT_REL_TOL) -> Optional[str]:
    """Raise on a real mismatch; return a note when only rounding noise differs (the caller then copies
    ``ref`` over), None when identical. Only properties both files store are compared."""
    if tuple(ref.size) != tuple(other.size):
        raise ConversionError(f"{path}: {what} of case {case_id!r} has size {list(other.size)} "
                              f"but the image has {list(ref.size)}")
    both = ref.known & other.known
    notes = []
    scale = max(ref.spacing) if ref.spacing else 1.0
    for key in GEOMETRY_KEYS:
        if key not in both:
            continue
        a, b = getattr(ref, key), getattr(other, key)
        if tuple(a) == tuple(b):
            continue
        atol = rel_tol * scale if key == "origin" else rel_tol
        if not _close(a, b, rtol=rel_tol, atol=atol):
            raise ConversionError(f"{path}: {what} of case {case_id!r} has {key} "
                                  f"{[round(v, 6) for v in b]} but the image has {[round(v, 6) for v in a]}")
        notes.append(key)
    return ", ".join(notes) if notes else None


def check_target_spacing(target_spacing: Sequence[float]) -> None:
    """Every value a positive finite number (a 0 used to be reported as not fitting the images' dimension)."""
    bad = [s for s in target_spacing if not (np.isfinite(float(s)) and float(s) > 0)]
    if bad:
        raise ConversionError(f"target spacing {[float(s) for s in target_spacing]}: spacing values must be "
                              f"positive, got {float(bad[0])}")


def target_grid(geom: Geometry, target_spacing: Optional[Sequence[float]]) -> Geometry:
    """The grid a case is resampled onto: same origin and direction, ``target_spacing`` given in
    numpy (z, y, x) order like ``RawCase.spacing``; the extent is kept."""
    if target_spacing is None:
        return geom
    check_target_spacing(target_spacing)
    spacing = tuple(float(s) for s in target_spacing)[::-1]
    if len(spacing) != len(geom.size):
        raise ConversionError(f"target spacing {list(target_spacing)} does not fit {len(geom.size)}D images")
    size = tuple(max(1, int(round(n * s / t))) for n, s, t in zip(geom.size, geom.spacing, spacing))
    return Geometry(size, spacing, geom.origin, geom.direction, geom.known)


INTERPOLATORS = {"linear": sitk.sitkLinear, "bspline": sitk.sitkBSpline, "nearest": sitk.sitkNearestNeighbor}


def resample(img: sitk.Image, grid: Geometry, interpolation: str = "linear") -> sitk.Image:
    if interpolation not in INTERPOLATORS:
        raise ConversionError(f"unknown interpolation {interpolation!r} (use one of {sorted(INTERPOLATORS)})")
    if Geometry.of(img, grid.known) == grid:
        return img
    pixel = sitk.sitkUInt8 if interpolation == "nearest" else sitk.sitkFloat32
    return sitk.Resample(img, list(grid.size), sitk.Transform(), INTERPOLATORS[interpolation],
                         grid.origin, grid.spacing, grid.direction, 0, pixel)


def infer_labels(values: Iterable[int]) -> Dict[str, int]:
    """{"background": 0, "label_1": 1, ...} up to the largest value seen (``pixel_checks.check_consecutive``
    has refused gaps). A dataset without any foreground still gets one label so planning works."""
    top = max([int(v) for v in values] + [1])
    labels = {"background": 0}
    labels.update({f"label_{k}": k for k in range(1, top + 1)})
    return labels


def check_label_values(values: Iterable[int], labels: Dict[str, int], case_id: str, path: str) -> None:
    allowed = set(_label_ints(labels))
    unknown = sorted(set(int(v) for v in values) - allowed)
    if unknown:
        raise ConversionError(f"{path}: mask of case {case_id!r} has label value(s) {unknown} "
                              f"not declared in labels {labels}")


def _label_ints(labels: Dict[str, object]) -> List[int]:
    out = []
    for v in labels.values():
        out.extend(int(x) for x in (v if isinstance(v, (list, tuple)) else [v]))
    return out
