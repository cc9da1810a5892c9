"""How far a case's pooled encoder features lie from the training cases': the feature part of ``ood_score``.

Fitted per fold when its heads are fitted, from the very whole-case features the heads read
(``pooling.features`` of the case's sums): standardised with the training cases' mean and spread, a
Mahalanobis distance under scikit-learn's Ledoit-Wolf shrunk covariance (well defined with fewer cases
than features). The threshold is a high quantile (99 %) of the fold's validation cases' distances, so about
1 % of inputs like the training data are flagged; the score is distance / threshold (> 1: flagged).
Stored as ``fold_X/input_check.npz`` (the standardised training features, from which the covariance is
refitted on loading, and the threshold); the folds' scores are averaged like their head outputs.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
from sklearn.covariance import LedoitWolf

FILE_NAME = "input_check.npz"
LEVEL = 0.99
MIN_SCALE = 1e-6


@dataclass
class FeatureCheck:
    mean: np.ndarray          # [F] training features' mean
    scale: np.ndarray         # [F] and spread
    train: np.ndarray         # [n, F] standardised training features
    threshold: float          # distance flagged above
    level: float = LEVEL
    stages: Sequence[int] = ()
    pools: Sequence[str] = ()

    def __post_init__(self):
        self._lw = LedoitWolf().fit(self.train)

    @classmethod
    def fit(cls, train: np.ndarray, val: np.ndarray, level: float = LEVEL, stages: Sequence[int] = (),
            pools: Sequence[str] = ()) -> "FeatureCheck":
        """From the fold's training cases' features ``[n, F]``; the threshold from its validation cases'
        (their ``level`` quantile; without validation cases, the training cases')."""
        train = np.asarray(train, dtype=np.float64)
        if train.shape[0] < 2:
            raise ValueError(f"the feature check needs at least 2 training cases, got {train.shape[0]}")
        mean, scale = train.mean(0), np.maximum(train.std(0), MIN_SCALE)
        check = cls(mean, scale, (train - mean) / scale, np.inf, level, tuple(stages), tuple(pools))
        ref = np.asarray(val, dtype=np.float64) if len(val) else train
        check.threshold = float(np.quantile(check.distance(ref), level))
        return check

    def distance(self, x: np.ndarray) -> np.ndarray:
        """``[m]`` Mahalanobis distances of ``[m, F]`` (or ``[F]``) features to the training cases."""
        z = (np.atleast_2d(np.asarray(x, dtype=np.float64)) - self.mean) / self.scale
        return np.sqrt(np.maximum(self._lw.mahalanobis(z), 0.0))

    def ratio(self, x: np.ndarray) -> np.ndarray:
        """distance / threshold: > 1 is flagged."""
        return self.distance(x) / max(self.threshold, 1e-12)

    def flag_rate(self, x: np.ndarray) -> float:
        return float(np.mean(self.ratio(x) > 1.0)) if len(x) else float("nan")

    def save(self, fold_dir: str) -> str:
        """``fold_dir/input_check.npz``, written atomically."""
        path = os.path.join(fold_dir, FILE_NAME)
        os.makedirs(fold_dir, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=fold_dir, prefix=".tmp_", suffix=".npz")
        try:
            with os.fdopen(fd, "wb") as f:
                np.savez(f, mean=self.mean, scale=self.scale, train=self.train.astype(np.float32),
                         threshold=self.threshold, level=self.level, stages=np.asarray(self.stages, dtype=np.int64),
                         pools=np.asarray(self.pools, dtype=str))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return path

    @classmethod
    def load(cls, path: str) -> "FeatureCheck":
        with np.load(path, allow_pickle=False) as z:
            return cls(z["mean"], z["scale"], z["train"].astype(np.float64), float(z["threshold"]),
                       float(z["level"]), tuple(int(s) for s in z["stages"]), tuple(str(p) for p in z["pools"]))


def load_folds(fold_dirs: Sequence[str]) -> Optional[List[FeatureCheck]]:
    """Each fold's check in the folds' order; None unless every fold has one (the folds' scores are averaged)."""
    paths = [os.path.join(d, FILE_NAME) for d in fold_dirs]
    if not paths or not all(os.path.isfile(p) for p in paths):
        return None
    return [FeatureCheck.load(p) for p in paths]


def fit_fold(fold_dir: str, x: Dict[str, np.ndarray], train_ids: Sequence[str], val_ids: Sequence[str],
             read_config: Dict[str, Sequence]) -> dict:
    """Fit the fold's check on its training cases' features ``x`` (case -> ``[F]``), threshold it on its
    validation cases', save it; returns the fold summary's entry (with the false-flag rates), or why not."""
    train = np.stack([x[c] for c in train_ids]) if train_ids else np.zeros((0, 0))
    val = np.stack([x[c] for c in val_ids if c in x]) if val_ids else np.zeros((0, train.shape[1]))
    try:
        check = FeatureCheck.fit(train, val, stages=read_config["stages"], pools=read_config["pools"])
    except ValueError as e:
        return {"fitted": False, "reason": str(e)}
    check.save(fold_dir)
    return {"fitted": True, "file": FILE_NAME, "threshold": check.threshold, "level": check.level,
            "threshold_from": "validation" if len(val) else "training", "n_validation": int(len(val)),
            "validation_flag_rate": check.flag_rate(val) if len(val) else None,
            "training_flag_rate": check.flag_rate(train)}
