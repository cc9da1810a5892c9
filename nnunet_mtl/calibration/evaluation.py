"""The calibration block of one classification target for the evaluation folder.

``calibration_block`` returns ECE / Brier (with stratified bootstrap CIs) and writes
``reliability_<target>.png``. Given the temperature in use, it scores the raw and the calibrated
probabilities side by side; on the cases the temperature was fitted on that comparison is
optimistic, and the block says so. ``validation_calibration`` does that for a fold's validation
cases with the temperatures in its ``calibration.json``.
"""
from __future__ import annotations

import os
from typing import Optional

import numpy as np

from nnunet_mtl.calibration.measures import N_BINS, calibration_metrics
from nnunet_mtl.calibration.reliability import reliability_diagram
from nnunet_mtl.calibration.temperature import apply_temperature
from nnunet_mtl.targets import CaseTable, Target, TargetSpec


def calibration_block(target: Target, y_true: np.ndarray, probs: np.ndarray, output_folder: Optional[str] = None, *,
                      temperature: Optional[float] = None, fitted_on_these_cases: bool = False,
                      n_bootstrap: int = 1000, seed: int = 0, n_bins: int = N_BINS) -> dict:
    """Calibration of ``probs`` (cases, classes) against true indices ``y_true``.

    Args:
        temperature: the temperature to score as well (``"calibrated"``); None scores ``probs`` only.
        fitted_on_these_cases: the temperature was fitted on these cases (adds an "optimistic" note).
        output_folder: where ``reliability_<target>.png`` goes; None writes no figure.
    Returns:
        ``{"raw": metrics, "calibrated": metrics?, "temperature"?, "note"?, "reliability_png"?}``.
    """
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(y_true, dtype=np.int64)
    out = {"raw": calibration_metrics(probs, y, n_bins, n_bootstrap, seed)}
    curves = {"raw": (probs, y)}
    if temperature is not None:
        calibrated = apply_temperature(probs, temperature)
        out["temperature"] = float(temperature)
        out["calibrated"] = calibration_metrics(calibrated, y, n_bins, n_bootstrap, seed)
        curves[f"calibrated (T = {temperature:.2f})"] = (calibrated, y)
        if fitted_on_these_cases:
            out["note"] = "temperature fitted on these same cases: the calibrated scores are optimistic"
    if output_folder and y.size:
        path = os.path.join(output_folder, f"reliability_{target.name}.png")
        out["reliability_png"] = os.path.basename(reliability_diagram(curves, path, title=target.name, n_bins=n_bins))
    return out


def validation_calibration(fold_dir: str, prediction_csv: str, spec: TargetSpec, labels: CaseTable,
                           output_folder: Optional[str], n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Target -> ``calibration_block`` of a fold's validation predictions (raw) scored raw and with the
    fold's fitted temperature, marked optimistic (the temperature was fitted on these same cases);
    {} when the fold has no ``calibration.json``."""
    from nnunet_mtl import prediction_table
    from nnunet_mtl.calibration.store import FoldCalibration
    calibration = FoldCalibration.load(fold_dir)
    if calibration is None:
        return {}
    preds = prediction_table.read(prediction_csv, spec)
    out = {}
    for i, t in enumerate(spec.classification_targets):
        fit = calibration.fits.get(t.name)
        cases = [c for c in sorted(preds) if labels.values.get(c, {}).get(t.name) is not None]
        if fit is None or not cases:
            continue
        y = np.array([t.class_index(labels.values[c][t.name]) for c in cases])
        probs = np.stack([preds[c]["probs"][t.name] for c in cases])
        block = calibration_block(t, y, probs, output_folder, temperature=fit.temperature, fitted_on_these_cases=True,
                                  n_bootstrap=n_bootstrap, seed=seed + i)
        block["fitted"], block["fit_reason"] = fit.fitted, fit.reason
        out[t.name] = block
    return out
