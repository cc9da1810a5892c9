"""How well ``seg_quality`` ranks cases by their real Dice: Spearman's rho, and the AUC of a low score for a
case whose Dice is below ``dice_ok`` (0.5 unless the user says otherwise); ``seg_quality_vs_dice.png`` draws
the cases."""
from __future__ import annotations

import csv
import os
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from nnunet_mtl.case_checks import NO, SEG_QUALITY, SEG_QUALITY_FLAG, YES

DICE_COLUMN = "dsc_mean"


def ranking_scores(scores: Sequence[float], dice: Sequence[float], dice_ok: float = 0.5) -> dict:
    """``spearman`` (None under 3 cases or a constant column), ``auc_dice_below`` (None without both kinds of
    case), ``n_dice_below``."""
    s, d = np.asarray(scores, dtype=float), np.asarray(dice, dtype=float)
    keep = np.isfinite(s) & np.isfinite(d)
    s, d = s[keep], d[keep]
    rho = None
    if s.size >= 3 and np.ptp(s) > 0 and np.ptp(d) > 0:
        rho = float(spearmanr(s, d).statistic)
    bad = d < dice_ok
    auc = float(roc_auc_score(bad, -s)) if 0 < bad.sum() < bad.size else None
    return {"spearman": rho, "auc_dice_below": auc, "dice_ok": float(dice_ok), "n_dice_below": int(bad.sum()),
            "n_scored": int(s.size)}


def seg_quality_block(per_case: Mapping[str, Mapping], quality: Mapping[str, float], dice_column: str,
                      dice_ok: float = 0.5, flagged: Optional[Mapping[str, bool]] = None) -> dict:
    """The evaluation summary's block: ``quality`` (case -> seg_quality) against ``per_case[c][dice_column]``;
    with ``flagged`` (case -> the table's seg_quality_flag) also ``n_flagged`` and ``flag_threshold_range``."""
    cases = sorted(c for c in quality if c in per_case and per_case[c].get(dice_column) is not None)
    block = ranking_scores([quality[c] for c in cases], [per_case[c][dice_column] for c in cases], dice_ok)
    for c in cases:
        per_case[c][SEG_QUALITY] = quality[c]
        if flagged and c in flagged:
            per_case[c][SEG_QUALITY_FLAG] = YES if flagged[c] else NO
    out = {"dice": dice_column, **block}
    if flagged:
        out.update(n_flagged=sum(bool(flagged.get(c)) for c in cases),
                   flag_threshold_range=flag_threshold_range(quality, flagged))
    return out


def flag_threshold_range(quality: Mapping[str, float], flagged: Mapping[str, bool]) -> Optional[list]:
    """[highest flagged score, lowest unflagged one]: the flag is 'score < threshold', so the folds' threshold
    lies in between (the table does not hold it); None without both kinds of case."""
    low = [quality[c] for c in quality if flagged.get(c) is True]
    high = [quality[c] for c in quality if flagged.get(c) is False]
    return [max(low), min(high)] if low and high else None


def table_quality(csv_path: str) -> Dict[str, Tuple[float, Optional[bool]]]:
    """case -> (seg_quality, its flag: True/False, None when the cell is missing or not yes/no) from a
    predictions table (empty without the column or the file)."""
    if not csv_path or not os.path.isfile(csv_path):
        return {}
    flag = {YES: True, NO: False}
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        return {r["case_id"]: (float(r[SEG_QUALITY]), flag.get((r.get(SEG_QUALITY_FLAG) or "").strip().lower()))
                for r in csv.DictReader(f) if (r.get(SEG_QUALITY) or "").strip()}


def evaluate_seg_quality(csv_path: str, per_case: Dict[str, dict], labels: Sequence[int],
                         dice_ok: float = 0.5) -> Optional[dict]:
    """The summary's ``seg_quality`` block: the table's scores against each case's mean Dice over its labels
    (``dsc_mean``, added to the per-case rows with ``seg_quality`` and ``seg_quality_flag``); None when the table
    has no seg_quality."""
    table = table_quality(csv_path)
    if not table or not labels:
        return None
    for row in per_case.values():
        dsc = [row[f"dsc_{lab}"] for lab in labels if row.get(f"dsc_{lab}") is not None]
        if dsc:
            row[DICE_COLUMN] = float(np.nanmean(dsc))
    flagged = {c: f for c, (_, f) in table.items() if f is not None}
    return seg_quality_block(per_case, {c: q for c, (q, _) in table.items()}, DICE_COLUMN, dice_ok, flagged)


def summary_line(block: Mapping) -> str:
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    return (f"seg_quality vs Dice (n={block['n_scored']}): Spearman {fmt(block['spearman'])}, AUC for Dice < "
            f"{block['dice_ok']:g} {fmt(block['auc_dice_below'])} ({block['n_dice_below']} such case(s))")
