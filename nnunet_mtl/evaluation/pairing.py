"""Pairing ground truth with predictions: which targets both sides have, and per target the
cases with a true value and their (true, predicted) values."""
from __future__ import annotations

import math
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np

from nnunet_mtl.evaluation.errors import EvaluationError
from nnunet_mtl.evaluation.ground_truth import prediction_header_spec
from nnunet_mtl.targets import CaseTable, Target, TargetSpec


def evaluated_spec(labels: CaseTable, prediction_csv: str, restrict: Optional[Sequence[str]]) -> TargetSpec:
    """The ground truth's targets that the predictions CSV also has (only ``restrict`` when given)."""
    header = prediction_header_spec(prediction_csv)
    names = [n for n in labels.spec.names if n in header.names]
    if restrict:
        unknown = [t for t in restrict if t not in names]
        if unknown:
            raise EvaluationError(f"target {unknown[0]!r} is not in both the ground truth ({labels.spec.names}) "
                                  f"and the predictions ({header.names})")
        names = [n for n in names if n in restrict]
    if not names:
        raise EvaluationError(f"no target in common between the ground truth ({labels.spec.names}) "
                              f"and the predictions ({header.names})")
    return TargetSpec(tuple(labels.spec[n] for n in names))


def gather_target(target: Target, cases: Sequence[str], labels: CaseTable, preds: Mapping[str, dict],
                  source: str = "the predictions") -> Tuple[List[str], np.ndarray, np.ndarray, Optional[np.ndarray]]:
    """(cases, y_true, y_pred, probs) for the cases with a GT value; raises on a missing required value.

    Classification values are class indices and ``probs`` is (cases, classes); regression has no probs.
    A regression prediction that is not a finite number where the truth exists is refused, not
    dropped: leaving the case out would score the model on the cases it happened to answer."""
    used, yt, yp, pr = [], [], [], []
    for c in cases:
        if c not in labels.values:
            raise EvaluationError(f"{source}: case {c!r} has no ground-truth label row")
        v = labels.values[c].get(target.name)
        if v is None:
            if target.allow_missing:
                continue
            raise EvaluationError(f"case {c!r}: no ground-truth value for target {target.name!r}")
        used.append(c)
        if target.is_classification:
            yt.append(target.classes.index(v))
            yp.append(target.classes.index(preds[c][target.name]))
            pr.append(preds[c]["probs"][target.name])
        else:
            if not math.isfinite(preds[c][target.name]):
                raise EvaluationError(f"{source}: case {c!r}: predicted {target.name!r} is {preds[c][target.name]}, "
                                      f"not a finite number, where the ground truth is {v}")
            yt.append(v)
            yp.append(preds[c][target.name])
    probs = np.asarray(pr, dtype=np.float64).reshape(len(used), -1) if target.is_classification else None
    return used, np.asarray(yt), np.asarray(yp), probs
