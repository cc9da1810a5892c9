"""Split conformal prediction sets and intervals from calibration scores (``crepes`` does the arithmetic).

Classification: the nonconformity score of a case is ``1 - p(true class)`` (calibrated probabilities). A class
enters a case's set when its p-value (the share of calibration scores at least as large, ``(k + 1) / (n + 1)``,
unsmoothed so the same case always gets the same set) is at least ``1 - coverage``. Class-conditional (Mondrian)
by default: each class is judged against the scores of the calibration cases of that class, so the coverage holds
for every class, rare ones included. A class with fewer than ``MIN_CLASS_CASES`` calibration cases is judged
against all cases instead (marginal; ``ClassSets.marginal_classes`` says which).

Regression: the score is ``|y - y_hat|``; the interval is ``y_hat +/- `` its ``coverage`` quantile (infinite
when there are too few cases for that coverage).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence, Tuple

import numpy as np
from crepes import ConformalClassifier, ConformalRegressor

MIN_CLASS_CASES = 20  # below this a class's own scores are too few to judge it; it falls back to all cases


def class_scores(probs: np.ndarray, y: Sequence[int]) -> np.ndarray:
    """Nonconformity of labelled cases: 1 - the probability given to the true class."""
    probs = np.asarray(probs, dtype=np.float64)
    return 1.0 - probs[np.arange(len(probs)), np.asarray(y, dtype=int)]


def check_coverage(coverage: float) -> float:
    if not 0.0 < float(coverage) < 1.0:
        raise ValueError(f"coverage must be between 0 and 1 (e.g. 0.9), got {coverage}")
    return float(coverage)


@dataclass
class ClassSets:
    """Prediction sets of many cases: ``members[i, c]`` is True when class ``c`` is in case ``i``'s set."""
    members: np.ndarray
    marginal_classes: Tuple[int, ...]  # classes judged against all calibration cases (too few of their own)


def prediction_sets(scores: np.ndarray, labels: Sequence[int], probs: np.ndarray, coverage: float,
                    class_conditional: bool = True, min_class_cases: int = MIN_CLASS_CASES) -> ClassSets:
    """Sets for cases with probabilities ``probs`` (n, k), from calibration ``scores`` and their true classes."""
    coverage = check_coverage(coverage)
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels, int)
    probs = np.atleast_2d(np.asarray(probs, np.float64))
    if not len(scores):
        raise ValueError("no calibration scores to make prediction sets from")
    test_alphas = 1.0 - probs
    marginal = ConformalClassifier().fit(scores)
    mondrian = ConformalClassifier().fit(scores, bins=labels)
    members = np.zeros(probs.shape, dtype=bool)
    fallback = []
    for c in range(probs.shape[1]):
        alphas = test_alphas[:, [c]]  # this class's column only
        if class_conditional and int(np.sum(labels == c)) >= min_class_cases:
            col = mondrian.predict_set(alphas, bins=np.full(len(probs), c), confidence=coverage, smoothing=False)
        else:
            fallback.append(c)
            col = marginal.predict_set(alphas, confidence=coverage, smoothing=False)
        members[:, c] = col[:, 0].astype(bool)
    return ClassSets(members, tuple(fallback) if class_conditional else ())


def intervals(residuals: np.ndarray, y_hat: np.ndarray, coverage: float) -> np.ndarray:
    """(n, 2) lower and upper bounds around ``y_hat`` from calibration ``residuals`` (|y - y_hat|); +/-inf where
    the residuals are too few for the coverage."""
    coverage = check_coverage(coverage)
    residuals = np.asarray(residuals, np.float64)
    if not len(residuals):
        raise ValueError("no calibration residuals to make intervals from")
    with warnings.catch_warnings():  # crepes warns once per call when n is too small; the bounds say it
        warnings.simplefilter("ignore", UserWarning)
        return ConformalRegressor().fit(residuals).predict_int(np.atleast_1d(np.asarray(y_hat, np.float64)),
                                                               confidence=coverage)
