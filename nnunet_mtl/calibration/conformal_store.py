"""Per-fold conformal calibration files, pooled over folds and applied to one case's outputs.

``fold_X/conformal.json`` sits next to ``calibration.json`` and holds the scores of the fold's validation cases
(whole cases, out of fold), so any coverage can be asked for at prediction time::

    {"method": "split_conformal", "fitted_on": "validation cases of this fold", "min_class_cases": 20,
     "targets": {"subtype": {"kind": "classification", "score": "1 - p(true class)", "temperature": 1.8,
                             "n_cases": 40, "scores": [...], "labels": ["a", ...],
                             "classes": {"a": {"n_cases": 37, "class_conditional": true},
                                         "b": {"n_cases": 3, "class_conditional": false, "reason": "..."}}},
                 "volume_ml": {"kind": "regression", "score": "|y - y_hat|", "n_cases": 40, "residuals": [...]}}}

The predictor averages its folds, so the folds' scores are pooled into one calibration set (every labelled
training case once, each scored by the fold that did not train on it); whether a class is judged on its own
scores is decided again on the pooled counts.
"""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from nnunet_mtl.calibration import conformal
from nnunet_mtl.calibration.store import FoldCalibration
from nnunet_mtl.calibration.temperature import apply_temperature
from nnunet_mtl.io_utils import atomic_write_json, read_json
from nnunet_mtl.prediction_table import (COVERAGE_COLUMN, NO, REVIEW_COLUMN, SET_SEPARATOR, YES, interval_columns,
                                         set_column)
from nnunet_mtl.targets import CaseTable, TargetSpec

log = logging.getLogger(__name__)

FILE_NAME = "conformal.json"
METHOD = "split_conformal"
DEFAULT_COVERAGE = 0.9


def _class_counts(t, labels: Sequence[int], min_class_cases: int) -> dict:
    out = {}
    for c, name in enumerate(t.classes):
        n = int(np.sum(np.asarray(labels, int) == c))
        entry = {"n_cases": n, "class_conditional": n >= min_class_cases}
        if n < min_class_cases:
            entry["reason"] = f"{n} validation case(s) < {min_class_cases}: judged against all cases (marginal)"
        out[name] = entry
    return out


def fit_fold(spec: TargetSpec, predictions: Mapping[str, Mapping], labels: CaseTable,
             calibration: Optional[FoldCalibration] = None,
             min_class_cases: int = conformal.MIN_CLASS_CASES) -> dict:
    """The ``conformal.json`` content of one fold from its validation rows (raw probabilities, as the trainer
    writes them; the fold's fitted temperature is applied first, as the predictor applies it)."""
    targets = {}
    for t in spec:
        rows = [(cid, labels.values.get(cid, {}).get(t.name)) for cid in sorted(predictions)]
        rows = [(cid, v) for cid, v in rows if v is not None]
        if t.is_classification:
            fit = calibration.fits.get(t.name) if calibration else None
            temperature = fit.temperature if fit is not None and fit.fitted else 1.0
            probs = np.reshape([apply_temperature(np.asarray(predictions[cid]["probs"][t.name], np.float64),
                                                  temperature) for cid, _ in rows], (len(rows), len(t.classes)))
            y = [t.class_index(v) for _, v in rows]
            targets[t.name] = {"kind": "classification", "score": "1 - p(true class)", "temperature": temperature,
                               "n_cases": len(rows), "scores": conformal.class_scores(probs, y).tolist(),
                               "labels": [t.classes[k] for k in y],
                               "classes": _class_counts(t, y, min_class_cases)}
        else:
            res = [abs(float(v) - float(predictions[cid][t.name])) for cid, v in rows]
            res = [r for r in res if math.isfinite(r)]
            targets[t.name] = {"kind": "regression", "score": "|y - y_hat|", "n_cases": len(res), "residuals": res}
    return {"method": METHOD, "fitted_on": "validation cases of this fold", "min_class_cases": min_class_cases,
            "targets": targets}


def conformal_fold(fold_dir: str, spec: TargetSpec, labels: CaseTable) -> dict:
    """Fit on ``fold_dir/validation/predictions.csv`` (with ``fold_dir/calibration.json``'s temperatures, if any)
    and write ``fold_dir/conformal.json``; returns its content."""
    from nnunet_mtl import prediction_table
    csv_path = os.path.join(fold_dir, "validation", "predictions.csv")
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"{csv_path}: no whole-case validation predictions to fit conformal sets on")
    content = fit_fold(spec, prediction_table.read(csv_path, spec), labels, FoldCalibration.load(fold_dir))
    atomic_write_json(os.path.join(fold_dir, FILE_NAME), content)
    return content


def describe(content: Mapping) -> List[str]:
    """One line per target for logs and summaries (cases, and the classes that fall back to marginal)."""
    lines = []
    for name, t in content.get("targets", {}).items():
        line = f"{name}: {t['n_cases']} validation case(s)"
        few = [c for c, e in t.get("classes", {}).items() if not e["class_conditional"]]
        if t["kind"] == "classification":
            line += "; class-conditional" + (f" except {', '.join(few)} (too few cases: marginal)" if few else "")
        lines.append(line)
    return lines


def load_fold(fold_dir: str) -> Optional[dict]:
    """The fold's conformal file, or None when it has none (models fitted before conformal sets)."""
    path = os.path.join(fold_dir, FILE_NAME)
    if not os.path.isfile(path):
        return None
    content = read_json(path)
    if content.get("method") != METHOD:
        raise ValueError(f"{path}: unknown conformal method {content.get('method')!r} (expected {METHOD!r})")
    return content


@dataclass
class EnsembleConformal:
    """The folds' calibration scores pooled per target; ``review`` makes one case's conformal columns."""
    scores: Dict[str, np.ndarray] = field(default_factory=dict)      # classification: 1 - p(true class)
    labels: Dict[str, np.ndarray] = field(default_factory=dict)      # classification: true class indices
    residuals: Dict[str, np.ndarray] = field(default_factory=dict)   # regression: |y - y_hat|
    min_class_cases: int = conformal.MIN_CLASS_CASES
    folds: Sequence[str] = ()

    @classmethod
    def from_fold_dirs(cls, fold_dirs: Iterable[str], spec: TargetSpec) -> Optional["EnsembleConformal"]:
        """Pooled over the folds that have ``conformal.json`` (a fold without one is logged and left out); None
        when none has."""
        fold_dirs = list(fold_dirs)
        loaded = {d: load_fold(d) for d in fold_dirs}
        present = {d: c for d, c in loaded.items() if c is not None}
        if not present:
            return None
        for d in sorted(set(loaded) - set(present)):
            log.warning("%s: no %s; its validation cases are not in the conformal calibration", d, FILE_NAME)
        out = cls(min_class_cases=min(c.get("min_class_cases", conformal.MIN_CLASS_CASES) for c in present.values()),
                  folds=tuple(present))
        for t in spec:
            entries = [c["targets"][t.name] for c in present.values() if t.name in c.get("targets", {})]
            if not entries:
                continue
            if t.is_classification:
                out.scores[t.name] = np.concatenate([np.asarray(e["scores"], np.float64) for e in entries])
                out.labels[t.name] = np.array([t.class_index(v) for e in entries for v in e["labels"]], dtype=int)
            else:
                out.residuals[t.name] = np.concatenate([np.asarray(e["residuals"], np.float64) for e in entries])
        return out

    def review(self, spec: TargetSpec, outputs: Mapping[str, np.ndarray], coverage: float = DEFAULT_COVERAGE,
               tolerances: Optional[Mapping[str, float]] = None) -> Dict[str, str]:
        """One case's conformal columns from its (calibrated) outputs; a target without scores is left empty.
        ``needs_review`` is yes when a set holds more or fewer than one class, or an interval is infinite or
        wider than ``tolerances[target]``."""
        tolerances = tolerances or {}
        cols, review = {}, False
        for t in spec:
            value = np.asarray(outputs[t.name], np.float64).reshape(-1)
            if t.is_classification and len(self.scores.get(t.name, ())):
                sets = conformal.prediction_sets(self.scores[t.name], self.labels[t.name], value[None], coverage,
                                                 min_class_cases=self.min_class_cases)
                members = [c for c, m in zip(t.classes, sets.members[0]) if m]
                cols[set_column(t.name)] = SET_SEPARATOR.join(members)
                review |= len(members) != 1
            elif not t.is_classification and len(self.residuals.get(t.name, ())):
                low, high = conformal.intervals(self.residuals[t.name], value[:1], coverage)[0]
                cols.update(zip(interval_columns(t.name), (f"{low:.6g}", f"{high:.6g}")))
                review |= not math.isfinite(high - low) or high - low > tolerances.get(t.name, math.inf)
        if cols:
            cols[COVERAGE_COLUMN] = f"{coverage:g}"
            cols[REVIEW_COLUMN] = YES if review else NO
        return cols
