"""Conformal sets and intervals of one target on whole cases: empirical coverage, set size / interval width,
and how many wrong predictions the review flag catches, with bootstrap CIs.

``ci95`` has the coverage of each true class too (``coverage[<class>]``; resampled within the classes, so every
resample has each), which ``coverage_<target>.png`` draws.

Read from the table's conformal columns (``prediction_table.review_columns``); cases whose columns are empty
(a model without ``conformal.json``) are not scored, and a table without any gives no block.
"""
from __future__ import annotations

import math
from typing import List, Mapping, Optional, Sequence

import numpy as np

from nnunet_mtl.evaluation import metrics as M
from nnunet_mtl.prediction_table import (COVERAGE_COLUMN, REVIEW_COLUMN, SET_SEPARATOR, YES, interval_columns,
                                         set_column)
from nnunet_mtl.targets import Target


def _nominal(reviews: Sequence[Mapping[str, str]]):
    values = sorted({r[COVERAGE_COLUMN] for r in reviews})
    return float(values[0]) if len(values) == 1 else [float(v) for v in values]


def _mean(x) -> float:
    x = np.asarray(x, dtype=float)
    return float(x.mean()) if len(x) else M.NAN


def class_coverage_key(class_name: str) -> str:
    """The ``ci95`` key of one true class's coverage (Mondrian sets: the guarantee holds per class)."""
    return f"coverage[{class_name}]"


def conformal_block(target: Target, cases: Sequence[str], y_true: np.ndarray, y_pred: np.ndarray,
                    preds: Mapping[str, dict], n_bootstrap: int, seed: int) -> Optional[dict]:
    """The conformal scores of ``target`` over the scored ``cases`` (their true and predicted class indices or
    values, as ``pairing.gather_target`` gives them); None when no case has conformal columns."""
    key = set_column(target.name) if target.is_classification else interval_columns(target.name)[0]
    keep = [i for i, c in enumerate(cases) if preds[c].get("review", {}).get(COVERAGE_COLUMN)
            and key in preds[c]["review"]]
    if not keep:
        return None
    reviews = [preds[cases[i]]["review"] for i in keep]
    flagged = np.array([r[REVIEW_COLUMN] == YES for r in reviews])
    out = {"n": len(keep), "nominal_coverage": _nominal(reviews), "flagged_rate": float(flagged.mean())}
    if target.is_classification:
        yt, yp = np.asarray(y_true)[keep], np.asarray(y_pred)[keep]
        members = [set(r[key].split(SET_SEPARATOR)) - {""} for r in reviews]
        covered = np.array([target.classes[y] in m for y, m in zip(yt, members)])
        size = np.array([len(m) for m in members], dtype=float)
        wrong = yt != yp
        out.update(coverage=float(covered.mean()), mean_set_size=float(size.mean()),
                   empty_sets=int((size == 0).sum()), n_wrong=int(wrong.sum()),
                   review_sensitivity_for_errors=_mean(flagged[wrong]),
                   per_class_coverage={c: _mean(covered[yt == k]) for k, c in enumerate(target.classes)},
                   per_class_n={c: int((yt == k).sum()) for k, c in enumerate(target.classes)})

        def fn(cov, sz, wr, fl, y):
            return {"coverage": float(cov.mean()), "mean_set_size": float(sz.mean()),
                    "review_sensitivity_for_errors": _mean(fl[wr]),
                    **{class_coverage_key(c): _mean(cov[y == k]) for k, c in enumerate(target.classes)}}
        arrays, strata = [covered, size, wrong, flagged, yt], yt
    else:
        low_col, high_col = interval_columns(target.name)
        low = np.array([float(r[low_col]) for r in reviews])
        high = np.array([float(r[high_col]) for r in reviews])
        y = np.asarray(y_true, dtype=float)[keep]
        covered = (low <= y) & (y <= high)
        width = high - low
        out.update(coverage=float(covered.mean()), median_width=float(np.median(width)),
                   infinite_intervals=int((~np.isfinite(width)).sum()))

        def fn(cov, wd):
            return {"coverage": float(cov.mean()), "median_width": float(np.median(wd))}
        arrays, strata = [covered, width], None
    if n_bootstrap > 0:
        out["ci95"] = M.bootstrap_ci(fn, arrays, n_bootstrap, seed, strata=strata)
    return out


def notes(name: str, block: Mapping) -> List[str]:
    """A note when the empirical coverage is below nominal by more than its CI allows (or than 0.05 without)."""
    nominal = block["nominal_coverage"]
    if not isinstance(nominal, float):
        return [f"{name}: rows predicted at several coverages {nominal}; coverage pooled over them"]
    upper = block.get("ci95", {}).get("coverage", {}).get("high", block["coverage"] + 0.05)
    if isinstance(upper, float) and math.isfinite(upper) and upper < nominal:
        return [f"{name}: conformal coverage {block['coverage']:.3f} below nominal {nominal:g} (95% CI excludes "
                f"it): the test cases may differ from the validation cases"]
    return []
