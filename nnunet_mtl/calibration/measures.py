"""Calibration measures for one classification target: ECE, Brier score, bootstrap CIs.

- ``expected_calibration_error``: top-label ECE with equal-width confidence bins,
  ``sum_b |B_b| / n * |accuracy(B_b) - confidence(B_b)|``.
- ``positive_class_ece``: for a binary target, the same on the positive class's probability
  against its frequency (what a threshold on ``p(positive)`` relies on).
- ``brier_score``: multi-class Brier, ``mean_i sum_k (p_ik - y_ik)^2`` (0 best, 2 worst).
- ``calibration_ci``: percentile bootstrap resampling cases *within each true class*, so every
  resample keeps every class (small validation sets otherwise give resamples without a class).
"""
from __future__ import annotations

import math
from typing import Callable, Dict

import numpy as np

N_BINS = 10


def _check(probs, y_true):
    p = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    if p.ndim != 2 or p.shape[0] != y.size:
        raise ValueError(f"probs must be (cases, classes) with one true class per case; got {p.shape}, {y.shape}")
    return p, y


def reliability_bins(confidence: np.ndarray, correct: np.ndarray, n_bins: int = N_BINS) -> Dict[str, np.ndarray]:
    """Per equal-width bin over [0, 1]: ``count``, mean ``confidence`` and ``accuracy`` (NaN when empty)
    and the bin ``edges``. The last bin is closed, so a confidence of 1.0 is counted."""
    conf = np.asarray(confidence, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, n_bins - 1)
    count = np.bincount(idx, minlength=n_bins).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(idx, conf, n_bins) / count
        acc = np.bincount(idx, hit, n_bins) / count
    return {"edges": edges, "count": count, "confidence": mean_conf, "accuracy": acc}


def _ece(confidence: np.ndarray, correct: np.ndarray, n_bins: int) -> float:
    if confidence.size == 0:
        return math.nan
    b = reliability_bins(confidence, correct, n_bins)
    filled = b["count"] > 0
    gap = np.abs(b["accuracy"][filled] - b["confidence"][filled])
    return float((b["count"][filled] * gap).sum() / confidence.size)


def expected_calibration_error(probs, y_true, n_bins: int = N_BINS) -> float:
    """Top-label ECE: confidence = the highest probability, correct = its class is the true one."""
    p, y = _check(probs, y_true)
    return _ece(p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64), n_bins)


def positive_class_ece(probs, y_true, n_bins: int = N_BINS, positive: int = 1) -> float:
    """ECE of ``p(positive)`` against the positive frequency (binary targets; class index ``positive``)."""
    p, y = _check(probs, y_true)
    return _ece(p[:, positive], (y == positive).astype(np.float64), n_bins)


def brier_score(probs, y_true) -> float:
    p, y = _check(probs, y_true)
    if y.size == 0:
        return math.nan
    onehot = np.eye(p.shape[1])[y]
    return float(((p - onehot) ** 2).sum(axis=1).mean())


def stratified_bootstrap(fn: Callable[[np.ndarray, np.ndarray], float], probs, y_true, n: int = 1000,
                         seed: int = 0, alpha: float = 0.05) -> dict:
    """``{"low", "high", "n_valid"}``: percentile CI of ``fn(probs, y)`` over ``n`` resamples that
    draw, for each true class, as many cases of that class as it has (with replacement)."""
    p, y = _check(probs, y_true)
    groups = [np.flatnonzero(y == c) for c in np.unique(y)]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(n)):
        idx = (np.concatenate([rng.choice(g, size=g.size, replace=True) for g in groups]) if groups
               else np.array([], int))
        values.append(float(fn(p[idx], y[idx])))
    arr = np.asarray(values)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"low": math.nan, "high": math.nan, "n_valid": 0}
    lo, hi = np.percentile(arr, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"low": float(lo), "high": float(hi), "n_valid": int(arr.size)}


def calibration_metrics(probs, y_true, n_bins: int = N_BINS, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """ECE (top-label; positive-class too for binary targets) and Brier score, each with a
    stratified 95% bootstrap CI under ``ci95`` (skipped when ``n_bootstrap`` is 0)."""
    p, y = _check(probs, y_true)
    fns = {"ece": lambda a, b: expected_calibration_error(a, b, n_bins), "brier": brier_score}
    if p.shape[1] == 2:
        fns["ece_positive_class"] = lambda a, b: positive_class_ece(a, b, n_bins)
    out = {k: fn(p, y) for k, fn in fns.items()}
    out.update({"n": int(y.size), "n_bins": int(n_bins)})
    if n_bootstrap > 0 and y.size:
        out["ci95"] = {k: stratified_bootstrap(fn, p, y, n_bootstrap, seed) for k, fn in fns.items()}
    return out


__all__ = ["N_BINS", "brier_score", "calibration_metrics", "expected_calibration_error", "positive_class_ece",
           "reliability_bins", "stratified_bootstrap"]
