"""Temperature scaling (Guo et al. 2017) for one classification target.

One scalar ``T > 0`` divides the logits before the softmax: ``p' = softmax(log p / T)``. It keeps
the predicted class (argmax) and every ranking, so AUC and argmax accuracy are unchanged; only the
confidence moves. ``T`` is fitted on whole validation cases by minimising the negative
log-likelihood over ``log T`` (bounded), which keeps ``T`` positive and the search one-dimensional.

Small clinical validation sets are the rule, so a fit that cannot be trusted keeps ``T = 1`` and
says why (too few cases, a single class, perfectly separated cases).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Sequence

import numpy as np
from scipy.optimize import minimize_scalar

EPS = 1e-12
LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))
MIN_CASES = 20  # one temperature from fewer cases is mostly noise (the demo's 6-case fold fitted T=5.4)
MIN_PER_CLASS = 3


@dataclass(frozen=True)
class TemperatureFit:
    """The fitted temperature of one target and what it did to the validation NLL.

    ``fitted`` is False when ``temperature`` is the fallback 1.0; ``reason`` then says why."""
    temperature: float
    n_cases: int
    nll_before: float
    nll_after: float
    fitted: bool
    reason: str = ""

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, d) -> "TemperatureFit":
        return cls(temperature=float(d["temperature"]), n_cases=int(d["n_cases"]),
                   nll_before=float(d["nll_before"]), nll_after=float(d["nll_after"]),
                   fitted=bool(d["fitted"]), reason=str(d.get("reason", "")))


def log_probs(probs: np.ndarray) -> np.ndarray:
    """Probabilities (cases, classes) -> logits up to a per-case constant (what softmax inverts)."""
    return np.log(np.clip(np.asarray(probs, dtype=np.float64), EPS, None))


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated probabilities ``softmax(log p / T)``, renormalised; works on one case (classes,)
    or many (cases, classes)."""
    if not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    return softmax(log_probs(probs) / float(temperature))


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes under ``softmax(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(y)), y].mean())


def fit_temperature(scores: Sequence[Sequence[float]], y_true: Sequence[int], *, from_logits: bool = False,
                    min_cases: int = MIN_CASES) -> TemperatureFit:
    """Fit ``T`` on validation cases.

    Args:
        scores: (cases, classes) probabilities (default) or logits (``from_logits=True``).
        y_true: true class index per case.
        min_cases: fewer cases than this keep ``T = 1``.

    Returns:
        A ``TemperatureFit``; ``fitted=False`` with ``temperature=1`` and a reason when the cases
        cannot support a fit (too few, one class only, perfectly separated: the NLL then falls
        without bound as ``T -> 0``, which would make every probability 0 or 1).
    """
    z = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64).reshape(-1)
    if z.ndim != 2 or z.shape[0] != y.size:
        raise ValueError(f"scores must be (cases, classes) with one true class per case; got {z.shape} and {y.shape}")
    if y.size and (y.min() < 0 or y.max() >= z.shape[1]):
        raise ValueError(f"true class indices must lie in [0, {z.shape[1] - 1}]")
    if not from_logits:
        z = log_probs(z)
    n = int(y.size)
    if n == 0:
        return TemperatureFit(1.0, 0, math.nan, math.nan, False, "no validation cases")
    before = nll(z, y)
    if n < min_cases:
        return _unfitted(n, before, f"only {n} validation case(s) (at least {min_cases} needed)")
    if np.unique(y).size < 2:
        return _unfitted(n, before, "the validation cases hold only one class")
    counts = np.bincount(y)
    if np.count_nonzero(counts >= MIN_PER_CLASS) < 2:
        return _unfitted(n, before, f"fewer than two classes have {MIN_PER_CLASS} or more validation cases")
    res = minimize_scalar(lambda log_t: nll(z, y, math.exp(log_t)), bounds=LOG_T_BOUNDS, method="bounded",
                          options={"xatol": 1e-4})
    log_t = float(res.x)
    if log_t <= LOG_T_BOUNDS[0] + 1e-3:
        return _unfitted(n, before, "the validation cases are perfectly separated; the NLL has no minimum")
    after = nll(z, y, math.exp(log_t))
    if not after < before:
        return _unfitted(n, before, "no temperature lowers the validation NLL")
    reason = "at the upper search bound (outputs barely informative)" if log_t >= LOG_T_BOUNDS[1] - 1e-3 else ""
    return TemperatureFit(math.exp(log_t), n, before, after, True, reason)


def _unfitted(n: int, before: float, reason: str) -> TemperatureFit:
    return TemperatureFit(1.0, n, before, before, False, reason)


def calibrate_threshold(threshold: float, temperature: float) -> float:
    """A binary decision threshold on raw ``p(positive)`` moved onto the calibrated scale: the same
    cases fall on each side, since temperature scaling is monotone (thresholds tuned on raw
    validation probabilities keep their meaning after calibration)."""
    t = min(max(float(threshold), 0.0), 1.0)
    return float(apply_temperature(np.array([1.0 - t, t]), temperature)[1])


def combine_temperatures(temperatures: Sequence[float]) -> float:
    """One temperature for a fold ensemble: the geometric mean (the mean of ``log T``), so T and
    1/T from two folds cancel; 1.0 for none."""
    values = [float(t) for t in temperatures]
    if not values:
        return 1.0
    return float(math.exp(np.mean(np.log(values))))


def fit_all(probs_by_target, y_by_target, min_cases: int = MIN_CASES) -> dict:
    """target -> ``TemperatureFit`` for dicts target -> (cases, classes) probabilities / true indices."""
    return {name: fit_temperature(probs_by_target[name], y_by_target[name], min_cases=min_cases)
            for name in probs_by_target}


__all__ = ["TemperatureFit", "apply_temperature", "calibrate_threshold", "combine_temperatures", "fit_all",
           "fit_temperature", "nll", "softmax"]
