"""A case's image against the dataset fingerprint nnU-Net stores with the model (``dataset_fingerprint.json``):
the fingerprint parts of ``ood_score``.

* intensity: per channel, the fraction of the image's voxels inside the training structures' intensity range
  (the fingerprint's foreground [0.5, 99.5] percentiles). An image like the training ones has its structures
  (and the tissue around them) there; an inverted, rescaled or wrong-modality image has almost nothing there.
  Ratio ``MIN_INSIDE / fraction`` (> 1: flagged, under 1 % of the voxels inside).
* spacing: per axis, how far the case's spacing lies beyond the training spacings' range, as a factor;
  ratio ``factor / SPACING_FACTOR`` (> 1: more than twice beyond the range).

Both read the raw image (before nnU-Net's normalisation, which hides a rescaling), as read by the model's
own reader. They cannot tell a training-like image of another anatomy; the feature check (``ood``) can.
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

import numpy as np

from nnunet_mtl import case_checks
from nnunet_mtl.io_utils import read_json

FINGERPRINT = "dataset_fingerprint.json"
MIN_INSIDE = 0.01
SPACING_FACTOR = 2.0
MAX_RATIO = 100.0


def load_fingerprint(model_dir: str) -> Optional[dict]:
    path = os.path.join(model_dir, FINGERPRINT)
    return read_json(path) if os.path.isfile(path) else None


def intensity_inside(image: np.ndarray, fingerprint: dict) -> Optional[float]:
    """The smallest over channels of the fraction of ``image`` ``[C, *spatial]`` voxels inside the training
    foreground's [0.5, 99.5] percentiles (None: the fingerprint has no intensities)."""
    props = fingerprint.get("foreground_intensity_properties_per_channel") or {}
    fractions = []
    for c in range(image.shape[0]):
        p = props.get(str(c))
        if not p:
            continue
        x = image[c]
        fractions.append(float(np.mean((x >= p["percentile_00_5"]) & (x <= p["percentile_99_5"]))))
    return min(fractions) if fractions else None


def spacing_factor(spacing: Sequence[float], fingerprint: dict) -> Optional[float]:
    """The largest factor by which an axis's spacing lies outside the training spacings' range (1 inside)."""
    spacings = np.asarray(fingerprint.get("spacings") or [], dtype=float)
    s = np.asarray(spacing, dtype=float)
    if spacings.ndim != 2 or spacings.shape[1] != s.size or not np.all(s > 0):
        return None
    lo, hi = spacings.min(0), spacings.max(0)
    return float(max(1.0, np.max(s / hi), np.max(lo / s)))


def check_image(image: np.ndarray, spacing: Sequence[float], fingerprint: Optional[dict]) -> Dict[str, np.ndarray]:
    """The case's raw check values (``case_checks`` keys) to add to its outputs; empty without a fingerprint."""
    if not fingerprint:
        return {}
    out = {}
    inside = intensity_inside(np.asarray(image), fingerprint)
    if inside is not None:
        out[case_checks.RAW_INTENSITY_INSIDE] = np.array([inside])
        out[case_checks.RAW_INTENSITY] = np.array([min(MAX_RATIO, MIN_INSIDE / max(inside, 1e-9))])
    factor = spacing_factor(spacing, fingerprint)
    if factor is not None:
        out[case_checks.RAW_SPACING] = np.array([factor / SPACING_FACTOR])
    return out


def check_files(files: Sequence[str], reader_writer_class, fingerprint: Optional[dict]) -> Dict[str, np.ndarray]:
    """``check_image`` of a case's channel files, read with the model's reader (nnU-Net's ``read_images``)."""
    if not fingerprint:
        return {}
    image, properties = reader_writer_class().read_images(list(files))
    return check_image(image, properties["spacing"], fingerprint)
