"""Refusing predictions that cannot be right, before anything is scored.

A classification row must hold probabilities (finite, non-negative, summing to 1 within
``PROB_SUM_TOLERANCE``) and, as its label, a most probable class (ties allowed): the predictor
writes the argmax, so anything else means a hand-edited, truncated or foreign table, and its
scores would be meaningless. Regression values are checked where they are used
(``pairing.gather_target``): NaN is allowed only where there is no true value to compare with.
"""
from __future__ import annotations

from typing import List, Mapping, Optional

import numpy as np

from nnunet_mtl import prediction_table
from nnunet_mtl.evaluation.errors import EvaluationError
from nnunet_mtl.targets import Target, TargetSpec

PROB_SUM_TOLERANCE = 1e-3


def probability_problem(target: Target, label: str, probs: np.ndarray) -> Optional[str]:
    """What is wrong with one case's label and class probabilities of ``target``, or None."""
    shown = ", ".join(f"{prediction_table.prob_column(target.name, c)}={p:g}" for c, p in zip(target.classes, probs))
    if not np.all(np.isfinite(probs)):
        return f"{target.name}: a probability is not a finite number ({shown})"
    if np.any(probs < 0):
        return f"{target.name}: negative probability ({shown})"
    total = float(probs.sum())
    if abs(total - 1.0) > PROB_SUM_TOLERANCE:
        return f"{target.name}: probabilities sum to {total:.4g}, not 1 ({shown})"
    best = int(np.argmax(probs))
    if probs[target.classes.index(label)] < probs[best]:
        return (f"{target.name}: predicted class {label!r} is not the most probable one, "
                f"{target.classes[best]!r} ({shown})")
    return None


def check_predictions(preds: Mapping[str, dict], spec: TargetSpec, source: str) -> None:
    """Raise one line naming ``source``, the first bad case and what is wrong (and how many more)."""
    if not preds:
        raise EvaluationError(f"{source}: no case rows")
    problems: List[str] = []
    for cid in sorted(preds):
        for t in spec.classification_targets:
            problem = probability_problem(t, preds[cid][t.name], preds[cid]["probs"][t.name])
            if problem:
                problems.append(f"case {cid!r}: {problem}")
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise EvaluationError(f"{source}: {problems[0]}{more}")
