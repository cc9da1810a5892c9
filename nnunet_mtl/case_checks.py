"""The per-case checks' columns in the predictions table: ``seg_quality``, ``seg_quality_flag``, ``ood_score``,
``ood_flag``.

The engine puts the raw measurements into a case's outputs under reserved keys (``RAW_KEYS``), so they travel
with the head outputs through the record and the folds' average; ``columns_of`` turns them into the columns,
``warning`` into the one stderr line of a flagged case. A case without them (an older run, a model without
the fold files) gets empty cells; a table without the columns still reads.

* ``seg_quality``: the mask's expected Dice estimated from the stitched probabilities (``inference.seg_quality``);
  flagged below the folds' threshold, chosen on their validation cases.
* ``ood_score``: the largest of the input checks' ratios to their thresholds (> 1: flagged): the image's
  intensities and spacing against the dataset fingerprint (``inference.input_check``) and the distance of its
  pooled encoder features to the training cases' (``inference.ood``).
"""
from __future__ import annotations

import math
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

SEG_QUALITY, SEG_QUALITY_FLAG, OOD_SCORE, OOD_FLAG = "seg_quality", "seg_quality_flag", "ood_score", "ood_flag"
COLUMNS = (SEG_QUALITY, SEG_QUALITY_FLAG, OOD_SCORE, OOD_FLAG)
YES, NO = "yes", "no"

# raw measurements in a case's outputs (values: 1-element arrays, as the head outputs)
RAW_SEG_QUALITY = "check_seg_quality"
RAW_SEG_THRESHOLD = "check_seg_quality_threshold"
RAW_FEATURES = "check_ood_features"        # feature distance / its threshold
RAW_INTENSITY = "check_ood_intensity"      # intensity check / its threshold
RAW_SPACING = "check_ood_spacing"          # spacing check / its threshold
RAW_INTENSITY_INSIDE = "check_intensity_inside"  # fraction of the image in the training structures' range
OOD_PARTS = {RAW_INTENSITY: "intensity", RAW_SPACING: "spacing", RAW_FEATURES: "features"}
RAW_KEYS = (RAW_SEG_QUALITY, RAW_SEG_THRESHOLD, RAW_INTENSITY_INSIDE) + tuple(OOD_PARTS)
DEFAULT_SEG_THRESHOLD = 0.5  # without a fold's validation threshold: an estimated Dice below 0.5


def is_check_key(name: str) -> bool:
    return name in RAW_KEYS


def _value(outputs: Mapping, key: str) -> Optional[float]:
    if key not in outputs:
        return None
    v = float(np.asarray(outputs[key], dtype=np.float64).reshape(-1)[0])
    return v if math.isfinite(v) else None


def ood_score(outputs: Mapping) -> Optional[float]:
    """The largest of the input checks' ratios present (None: no check ran)."""
    parts = [v for v in (_value(outputs, k) for k in OOD_PARTS) if v is not None]
    return max(parts) if parts else None


def columns_of(outputs: Mapping) -> Dict[str, object]:
    """The check columns of one case's row (only those whose measurement is there)."""
    row: Dict[str, object] = {}
    q = _value(outputs, RAW_SEG_QUALITY)
    if q is not None:
        threshold = _value(outputs, RAW_SEG_THRESHOLD)
        row[SEG_QUALITY] = round(q, 4)
        row[SEG_QUALITY_FLAG] = YES if q < (DEFAULT_SEG_THRESHOLD if threshold is None else threshold) else NO
    score = ood_score(outputs)
    if score is not None:
        row[OOD_SCORE] = round(score, 4)
        row[OOD_FLAG] = YES if score > 1.0 else NO
    return row


def present(rows: Sequence[Mapping]) -> list:
    """The check columns any of these rows has, in table order."""
    return [c for c in COLUMNS if any(c in r for r in rows)]


def warning(case_id: str, outputs: Mapping) -> Optional[str]:
    """One line for a flagged case: what is unusual and what to check (None when nothing is flagged)."""
    parts = []
    score = ood_score(outputs)
    if score is not None and score > 1.0:
        inside = _value(outputs, RAW_INTENSITY_INSIDE)
        for key, what in OOD_PARTS.items():
            v = _value(outputs, key)
            if v is None or v <= 1.0:
                continue
            if key == RAW_INTENSITY and inside is not None:
                parts.append(f"only {100 * inside:.1f} % of the image in the training structures' intensity range")
            else:
                parts.append(f"{what} {v:.1f}x the threshold")
        parts = [f"unlike the training data ({'; '.join(parts)}); check modality, orientation and scaling"]
    q = _value(outputs, RAW_SEG_QUALITY)
    if q is not None and columns_of(outputs).get(SEG_QUALITY_FLAG) == YES:
        parts.append(f"low segmentation quality {q:.2f} (estimated Dice); review the mask")
    return f"case {case_id}: " + "; ".join(parts) if parts else None
