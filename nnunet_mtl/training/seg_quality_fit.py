"""The fold's ``seg_quality`` threshold, chosen at the end of its final validation: the validation cases'
scores (their rows) against their real Dice (nnU-Net's ``summary.json``), written to ``fold_X/seg_quality.json``
with how well the score ranked the Dice (Spearman, AUC for Dice < 0.5)."""
from __future__ import annotations

import os
from typing import Dict, Mapping, Sequence

import numpy as np

from nnunet_mtl.case_checks import SEG_QUALITY
from nnunet_mtl.evaluation.seg_quality import ranking_scores
from nnunet_mtl.inference.seg_quality import fit_threshold, write_fold
from nnunet_mtl.io_utils import read_json


def case_dice(summary_json: str, file_ending: str) -> Dict[str, float]:
    """case -> mean Dice over the labels (or regions) in nnU-Net's ``summary.json`` present in the mask or the
    reference (nnU-Net's NaN: empty in both); 1 when none is."""
    out = {}
    for entry in read_json(summary_json).get("metric_per_case", []):
        name = os.path.basename(entry["prediction_file"])
        case = name[:-len(file_ending)] if name.endswith(file_ending) else name
        dice = [m.get("Dice") for m in entry["metrics"].values()]
        dice = [float(d) for d in dice if d is not None and np.isfinite(d)]
        out[case] = float(np.mean(dice)) if dice else 1.0
    return out


def fit_fold(fold_dir: str, rows: Sequence[Mapping], summary_json: str, file_ending: str) -> dict:
    """Write ``fold_dir/seg_quality.json`` from the validation rows; returns its content (the fold summary's
    entry). Without rows carrying ``seg_quality`` nothing is written."""
    scores = {r["case_id"]: float(r[SEG_QUALITY]) for r in rows if r.get(SEG_QUALITY) not in (None, "")}
    if not scores:
        return {"fitted": False, "reason": "no validation case has a seg_quality"}
    dice = case_dice(summary_json, file_ending) if os.path.isfile(summary_json) else {}
    cases = sorted(c for c in scores if c in dice)
    fit = {**fit_threshold(list(scores.values())),
           **ranking_scores([scores[c] for c in cases], [dice[c] for c in cases])}
    write_fold(fold_dir, fit)
    return {"fitted": True, **fit}
