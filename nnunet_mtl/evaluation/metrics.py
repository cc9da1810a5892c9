"""Pure metric functions on whole cases: numpy in, floats/dicts out, no file access.

Conventions (also written into ``metrics.json`` by ``nnunet_mtl.evaluation``):

* **Dice of empty masks.** GT and prediction both empty -> DSC = 1.0 (the case counts in
  the mean); exactly one of them empty -> 0.0.
* **HD95 / surface Dice.** NaN when GT or prediction is empty (a distance to nothing is
  undefined); such cases are left out of the mean/median. HD95 is the larger of the two
  directed 95th-percentile surface distances; surface Dice is the fraction of surface
  voxels of both masks lying within ``tolerance`` (same units as the spacing) of the other
  surface. Surfaces are the mask voxels removed by one binary erosion.
* **Classification.** Macro averages run over the classes that occur in GT or predictions
  (as scikit-learn does without ``labels=``); balanced accuracy is the mean recall over
  classes present in GT; undefined precision/recall are 0. For binary targets the positive
  class is the *last* class of the target's class list.
* **ROC AUC.** Binary: Mann-Whitney AUC of the positive-class probability. Multi-class:
  unweighted mean of one-vs-rest AUCs. NaN (with a note) when a class is absent from GT.
* **Bootstrap.** Cases are resampled with replacement; the CI is the percentile interval of
  the resampled statistic; resamples where the statistic is undefined (NaN) are dropped
  and counted (``n_valid``). Classification CIs resample *within each true class*
  (stratified): every resample keeps each class's count, so none misses a class. Plain
  resampling would score resamples without positives as perfect (20 cases, 3 positive, an
  all-negative predictor: macro-F1 CI [0.41, 1.00] instead of the constant 0.46).
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn
from scipy import ndimage
from scipy.stats import rankdata

NAN = float("nan")


# ------------------------------------------------------------------------------ segmentation
def dice(pred_mask: np.ndarray, gt_mask: np.ndarray) -> float:
    """Dice of two boolean masks; both empty -> 1.0, one empty -> 0.0."""
    gt, pred = np.asarray(gt_mask, dtype=bool), np.asarray(pred_mask, dtype=bool)
    tp, fp, fn, _ = compute_tp_fp_fn_tn(gt, pred)
    denom = 2 * tp + fp + fn
    return 1.0 if denom == 0 else float(2 * tp / denom)


def _surface(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask, border_value=0)


def surface_metrics(pred_mask: np.ndarray, gt_mask: np.ndarray, spacing: Sequence[float],
                    tolerance: float = 1.0) -> Tuple[float, float]:
    """(HD95, surface Dice at ``tolerance``) in spacing units; (NaN, NaN) when either mask is empty."""
    gt, pred = np.asarray(gt_mask, dtype=bool), np.asarray(pred_mask, dtype=bool)
    if not gt.any() or not pred.any():
        return NAN, NAN
    spacing = tuple(float(s) for s in spacing)
    s_gt, s_pred = _surface(gt), _surface(pred)
    d_to_gt = ndimage.distance_transform_edt(~s_gt, sampling=spacing)
    d_to_pred = ndimage.distance_transform_edt(~s_pred, sampling=spacing)
    pred_to_gt, gt_to_pred = d_to_gt[s_pred], d_to_pred[s_gt]
    hd95 = max(np.percentile(pred_to_gt, 95), np.percentile(gt_to_pred, 95))
    nsd = (np.sum(pred_to_gt <= tolerance) + np.sum(gt_to_pred <= tolerance)) / (pred_to_gt.size + gt_to_pred.size)
    return float(hd95), float(nsd)


def summarize(values: Sequence[float]) -> dict:
    """mean/median/std/min/max over the finite values, plus how many were finite and NaN."""
    arr = np.asarray(values, dtype=np.float64)
    finite = arr[np.isfinite(arr)]
    if finite.size == 0:
        return {"mean": NAN, "median": NAN, "std": NAN, "min": NAN, "max": NAN, "n": 0, "n_nan": int(arr.size)}
    return {"mean": float(finite.mean()), "median": float(np.median(finite)), "std": float(finite.std()),
            "min": float(finite.min()), "max": float(finite.max()), "n": int(finite.size),
            "n_nan": int(arr.size - finite.size)}


# ---------------------------------------------------------------------------- classification
def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Rows = true class, columns = predicted class (scikit-learn's layout)."""
    y_true, y_pred = np.asarray(y_true, dtype=np.int64), np.asarray(y_pred, dtype=np.int64)
    return np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def _safe_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.divide(a, b, out=np.zeros_like(a, dtype=np.float64), where=b > 0)


def per_class_scores(cm: np.ndarray) -> Dict[str, np.ndarray]:
    """precision/recall/F1/support per class from a confusion matrix (undefined -> 0)."""
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(1).astype(np.float64), cm.sum(0).astype(np.float64)
    precision, recall = _safe_div(tp, predicted), _safe_div(tp, support)
    f1 = _safe_div(2 * precision * recall, precision + recall)
    return {"precision": precision, "recall": recall, "f1": f1, "support": support.astype(np.int64),
            "predicted": predicted.astype(np.int64)}


def scores_from_confusion(cm: np.ndarray) -> Dict[str, float]:
    """Headline scores of one confusion matrix; used for the point estimate and every resample."""
    s = per_class_scores(cm)
    occurring = (s["support"] > 0) | (s["predicted"] > 0)
    in_gt = s["support"] > 0
    n = cm.sum()
    out = {"accuracy": float(np.trace(cm) / n) if n else NAN,
           "macro_f1": float(s["f1"][occurring].mean()) if occurring.any() else NAN,
           "balanced_accuracy": float(s["recall"][in_gt].mean()) if in_gt.any() else NAN}
    if cm.shape[0] == 2:  # positive = last class
        tn, fp, fn, tp = cm.ravel()
        out["sensitivity"] = float(tp / (tp + fn)) if tp + fn else NAN
        out["specificity"] = float(tn / (tn + fp)) if tn + fp else NAN
    return out


def binary_auc(y_pos: np.ndarray, score: np.ndarray) -> float:
    """Mann-Whitney AUC (ties count half); NaN when one of the two groups is empty."""
    y_pos = np.asarray(y_pos, dtype=bool)
    n_pos, n_neg = int(y_pos.sum()), int((~y_pos).sum())
    if n_pos == 0 or n_neg == 0:
        return NAN
    ranks = rankdata(np.asarray(score, dtype=np.float64))
    return float((ranks[y_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def roc_auc(y_true: np.ndarray, probs: Optional[np.ndarray], n_classes: int) -> Tuple[float, str]:
    """(AUC, note): binary AUC of the last class, or one-vs-rest macro AUC; NaN + note when undefined."""
    if probs is None:
        return NAN, "no class probabilities in the predictions"
    y_true = np.asarray(y_true, dtype=np.int64)
    absent = [k for k in range(n_classes) if not np.any(y_true == k)]
    if absent:
        return NAN, f"AUC undefined: class index(es) {absent} absent from the ground truth"
    probs = np.asarray(probs, dtype=np.float64)
    if n_classes == 2:
        return binary_auc(y_true == 1, probs[:, 1]), ""
    return float(np.mean([binary_auc(y_true == k, probs[:, k]) for k in range(n_classes)])), ""


def classification_metrics(y_true_idx: Sequence[int], y_pred_idx: Sequence[int], probs: Optional[np.ndarray],
                           class_names: Sequence[str]) -> dict:
    """Headline scores, AUC (+note), confusion matrix and per-class report for one target."""
    k = len(class_names)
    cm = confusion_matrix(y_true_idx, y_pred_idx, k)
    s = per_class_scores(cm)
    out = scores_from_confusion(cm)
    out["roc_auc"], out["roc_auc_note"] = roc_auc(y_true_idx, probs, k)
    out["confusion_matrix"] = cm.tolist()
    out["classes"] = list(class_names)
    out["per_class"] = {c: {"precision": float(s["precision"][i]), "recall": float(s["recall"][i]),
                            "f1": float(s["f1"][i]), "support": int(s["support"][i])}
                        for i, c in enumerate(class_names)}
    if k == 2:
        out["positive_class"] = class_names[-1]
    out["n"] = int(cm.sum())
    return out


# -------------------------------------------------------------------------------- regression
def regression_metrics(y: Sequence[float], yhat: Sequence[float]) -> dict:
    """MAE, RMSE and Pearson r (NaN when fewer than 2 cases or a constant series)."""
    y, yhat = np.asarray(y, dtype=np.float64), np.asarray(yhat, dtype=np.float64)
    if y.size == 0:
        return {"mae": NAN, "rmse": NAN, "pearson_r": NAN, "n": 0}
    err = yhat - y
    r = NAN
    if y.size >= 2 and np.std(y) > 0 and np.std(yhat) > 0:
        r = float(np.corrcoef(y, yhat)[0, 1])
    return {"mae": float(np.abs(err).mean()), "rmse": float(np.sqrt((err ** 2).mean())), "pearson_r": r,
            "n": int(y.size)}


# --------------------------------------------------------------------------------- bootstrap
def bootstrap_ci(fn: Callable[..., Union[float, Dict[str, float]]], arrays: Sequence[np.ndarray], n: int = 1000,
                 seed: int = 0, alpha: float = 0.05, strata: Optional[Sequence] = None) -> dict:
    """Percentile CI of ``fn(*arrays)`` over ``n`` case resamples (same indices for every array).

    ``fn`` returns a float (-> one ``{"low", "high", "n_valid"}``) or a dict of floats (-> a dict
    of those). NaN resamples are dropped and reported via ``n_valid``. With ``strata`` (one label
    per case, e.g. the true class) cases are resampled within each stratum, so every resample
    keeps each stratum's size."""
    samples = bootstrap_samples(fn, arrays, n, seed, strata)
    if not samples or not isinstance(samples[0], dict):
        return _percentiles([float(s) for s in samples], alpha)
    return {k: _percentiles([float(s[k]) for s in samples], alpha) for k in samples[0]}


def bootstrap_samples(fn: Callable, arrays: Sequence[np.ndarray], n: int = 1000, seed: int = 0,
                      strata: Optional[Sequence] = None) -> list:
    """``fn(*arrays)`` on each of ``n`` case resamples; the same ``seed`` and ``strata`` give the resamples of
    ``bootstrap_ci`` (so a count over them describes the resamples behind its intervals)."""
    arrays = [np.asarray(a) for a in arrays]
    m = len(arrays[0])
    groups = [np.arange(m)] if strata is None else [np.flatnonzero(np.asarray(strata) == g)
                                                    for g in np.unique(np.asarray(strata))]
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(int(n)):
        idx = np.concatenate([g[rng.integers(0, len(g), size=len(g))] for g in groups])
        samples.append(fn(*[a[idx] for a in arrays]))
    return samples


def _percentiles(values: Sequence[float], alpha: float) -> dict:
    arr = np.asarray(values, dtype=np.float64)
    arr = arr[np.isfinite(arr)]
    if arr.size == 0:
        return {"low": NAN, "high": NAN, "n_valid": 0}
    lo, hi = np.percentile(arr, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"low": float(lo), "high": float(hi), "n_valid": int(arr.size)}


# -------------------------------------------------------------------------- threshold tuning
def tune_threshold(y: Sequence[int], p: Sequence[float], method: str = "youden") -> Tuple[float, float]:
    """(threshold, score): predict positive when ``p >= threshold``; maximises Youden's J
    (sensitivity + specificity - 1) or F1 over the observed probabilities; ties -> the highest threshold."""
    y, p = np.asarray(y, dtype=bool), np.asarray(p, dtype=np.float64)
    if method not in ("youden", "f1"):
        raise ValueError(f"unknown threshold method {method!r} (use 'youden' or 'f1')")
    if y.all() or not y.any():
        raise ValueError("threshold tuning needs both classes in the ground truth")
    candidates = np.unique(p)[::-1]
    pred = p[None, :] >= candidates[:, None]
    tp = (pred & y).sum(1)
    fp = (pred & ~y).sum(1)
    fn = y.sum() - tp
    if method == "youden":
        score = tp / y.sum() - fp / (~y).sum()
    else:
        score = _safe_div(2.0 * tp, (2 * tp + fp + fn).astype(np.float64))
    best = int(np.argmax(score))
    return float(candidates[best]), float(score[best])
