"""Per-fold calibration files and applying them to predictions.

``fold_X/calibration.json`` sits next to the fold's checkpoint::

    {"method": "temperature_scaling", "fitted_on": "validation cases of this fold",
     "targets": {"subtype": {"temperature": 1.8, "n_cases": 40, "nll_before": 0.91,
                             "nll_after": 0.62, "fitted": true, "reason": ""}}}

The predictor averages probabilities over folds, so the ensemble is calibrated with one
temperature per target: the geometric mean of the folds' temperatures (``combine_temperatures``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, Mapping, Optional, Sequence

import numpy as np

from nnunet_mtl.calibration.temperature import (TemperatureFit, apply_temperature, combine_temperatures,
                                                fit_temperature, MIN_CASES)
from nnunet_mtl.io_utils import atomic_write_json, read_json
from nnunet_mtl.prediction_table import CALIBRATED_COLUMN, NO, YES, prob_column
from nnunet_mtl.targets import CaseTable, TargetSpec

log = logging.getLogger(__name__)

FILE_NAME = "calibration.json"
METHOD = "temperature_scaling"


@dataclass
class FoldCalibration:
    """The temperature fits of one fold, by target name."""
    fits: Dict[str, TemperatureFit] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"method": METHOD, "fitted_on": "validation cases of this fold",
                "targets": {k: v.to_json() for k, v in self.fits.items()}}

    @classmethod
    def from_json(cls, d: Mapping, source: str = "calibration file") -> "FoldCalibration":
        if d.get("method") != METHOD:
            raise ValueError(f"{source}: unknown calibration method {d.get('method')!r} (expected {METHOD!r})")
        return cls({k: TemperatureFit.from_json(v) for k, v in d.get("targets", {}).items()})

    def save(self, fold_dir: str) -> str:
        path = os.path.join(fold_dir, FILE_NAME)
        atomic_write_json(path, self.to_json())
        return path

    @classmethod
    def load(cls, fold_dir: str) -> Optional["FoldCalibration"]:
        """The fold's calibration, or None when the fold has no calibration file."""
        path = os.path.join(fold_dir, FILE_NAME)
        if not os.path.isfile(path):
            return None
        return cls.from_json(read_json(path), path)


def fit_fold(spec: TargetSpec, predictions: Mapping[str, Mapping], labels: CaseTable,
             min_cases: int = MIN_CASES) -> FoldCalibration:
    """Fit every classification target on one fold's validation cases.

    Args:
        spec: the target spec.
        predictions: ``prediction_table.read`` output for the fold's validation cases (raw probabilities).
        labels: the true labels; cases without a label for a target are left out of that target.
    """
    fits = {}
    for t in spec.classification_targets:
        probs, y = [], []
        for cid in sorted(predictions):
            value = labels.values.get(cid, {}).get(t.name)
            if value is None:
                continue
            probs.append(np.asarray(predictions[cid]["probs"][t.name], dtype=np.float64))
            y.append(t.class_index(value))
        fit = fit_temperature(np.reshape(probs, (len(y), len(t.classes))), y, min_cases=min_cases)
        if not fit.fitted:
            log.info("calibration of %r kept T=1: %s", t.name, fit.reason)
        fits[t.name] = fit
    return FoldCalibration(fits)


@dataclass
class EnsembleCalibration:
    """One temperature per target for a fold ensemble (targets without a fitted one are left as they are)."""
    temperatures: Dict[str, float]
    folds: Sequence[str] = ()

    @classmethod
    def from_fold_dirs(cls, fold_dirs: Iterable[str]) -> Optional["EnsembleCalibration"]:
        """Per target, the geometric mean of the folds' fitted temperatures; None when no fold has a fitted one.

        A target enters only where a fold has a *fitted* temperature (a fit the cases could not support keeps
        T = 1 in its file and says so; it is not a calibration). A fold without a fit for such a target counts
        as T = 1 (logged), so a partly calibrated ensemble is never more confident than its folds."""
        fold_dirs = list(fold_dirs)
        loaded = {d: FoldCalibration.load(d) for d in fold_dirs}
        names = sorted({n for c in loaded.values() if c for n, fit in c.fits.items() if fit.fitted})
        if not names:
            return None
        temps = {}
        for name in names:
            per_fold = []
            for d, c in loaded.items():
                fit = None if c is None else c.fits.get(name)
                if fit is None or not fit.fitted:
                    log.warning("%s: no fitted calibration for %r; counted as T=1", d, name)
                    per_fold.append(1.0)
                else:
                    per_fold.append(fit.temperature)
            temps[name] = combine_temperatures(per_fold)
        return cls(temps, tuple(fold_dirs))

    def covers(self, targets: Iterable[str]) -> bool:
        """Whether every one of these targets has a fitted temperature (what ``probabilities_calibrated`` says)."""
        return all(t in self.temperatures for t in targets)

    def apply_probs(self, target: str, probs: np.ndarray) -> np.ndarray:
        return apply_temperature(probs, self.temperatures.get(target, 1.0))

    def apply_outputs(self, spec: TargetSpec, outputs: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The predictor's per-case ``{target: probabilities | value}`` with classification probabilities
        calibrated (what ``prediction_table.make_row`` takes); regression values pass through."""
        out = dict(outputs)
        for t in spec.classification_targets:
            if t.name in out:
                out[t.name] = self.apply_probs(t.name, out[t.name])
        return out

    def apply_row(self, spec: TargetSpec, row: Mapping) -> dict:
        """A ``predictions.csv`` row with calibrated probability columns, the class re-derived
        (argmax; temperature scaling never changes it) and ``probabilities_calibrated`` set."""
        out = dict(row)
        for t in spec.classification_targets:
            cols = [prob_column(t.name, c) for c in t.classes]
            probs = self.apply_probs(t.name, np.array([float(row[c]) for c in cols]))
            out.update({c: float(p) for c, p in zip(cols, probs)})
            out[t.name] = t.classes[int(np.argmax(probs))]
        out[CALIBRATED_COLUMN] = YES if self.covers(t.name for t in spec.classification_targets) else NO
        return out


def calibrate_fold(fold_dir: str, spec: TargetSpec, labels: CaseTable, min_cases: int = MIN_CASES) -> FoldCalibration:
    """Fit on ``fold_dir/validation/predictions.csv`` (the trainer's whole-case validation, raw
    probabilities) and write ``fold_dir/calibration.json``; returns the fits."""
    from nnunet_mtl import prediction_table
    csv_path = os.path.join(fold_dir, "validation", "predictions.csv")
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"{csv_path}: no whole-case validation predictions to calibrate on")
    calibration = fit_fold(spec, prediction_table.read(csv_path, spec), labels, min_cases)
    calibration.save(fold_dir)
    return calibration
