"""A head fitted in closed form: per target, a scikit-learn linear model on standardised whole-case features,
written into a ``model.heads.Head`` (its scaler buffers and ``fc``).

Classification: logistic regression (``class_weight='balanced'``, the inverse regularisation C chosen by
stratified k-fold CV on the log-loss); regression: ridge (alpha by efficient leave-one-out CV). Which pools a
target reads is chosen the same way (``select_and_fit``): every combination of the pools the head reads is
fitted and the one with the best CV score kept (the others' columns get weight 0), because no one set wins every
target: on hippocampus the segmentation's measurements read the volume best, the foreground pool a texture
inside the structure, and all of them together lose on both (docs/benchmarks.md). The head then
computes exactly the estimator's ``predict_proba`` / ``predict``: binary logistic regression as two logits
``-d/2, +d/2`` (softmax = sigmoid(d)), multinomial as the decision function, a class absent from the training
cases as a logit of -1e4 (probability 0, as scikit-learn gives it).
"""
from __future__ import annotations

import inspect
import itertools
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from sklearn.linear_model import LogisticRegressionCV, RidgeCV
from sklearn.model_selection import StratifiedKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from nnunet_mtl.model.heads import Head
from nnunet_mtl.targets import CaseTable, Target, TargetSpec

C_GRID = np.logspace(-4, 2, 13)
ALPHA_GRID = np.logspace(-2, 5, 15)
ABSENT_LOGIT = -1e4


class FitError(ValueError):
    """The training cases cannot support a fit (e.g. a class with fewer than 2 cases); the message says which."""


def make_estimator(target: Target, y: np.ndarray, seed: int = 0, max_folds: int = 5):
    """An unfitted scikit-learn pipeline for one target (scaler + CV-regularised linear model)."""
    if not target.is_classification:
        return make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHA_GRID))
    counts = np.bincount(y, minlength=len(target.classes))
    present = counts[counts > 0]
    if len(present) < 2 or present.min() < 2:
        raise FitError(f"target {target.name!r}: fitting a head needs at least 2 training cases of each of at least "
                       f"2 classes, got {dict(zip(target.classes, counts.tolist()))}")
    cv = StratifiedKFold(min(max_folds, int(present.min())), shuffle=True, random_state=seed)
    return make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=C_GRID, cv=cv, class_weight="balanced",
                                                                scoring="neg_log_loss", max_iter=5000,
                                                                **_plain_l2_kwargs(LogisticRegressionCV)))


def _plain_l2_kwargs(cls) -> dict:
    """scikit-learn >= 1.8 warns unless the L2-only penalty and the new fitted attributes are explicit;
    older versions do not know these arguments."""
    params = inspect.signature(cls).parameters
    return dict(l1_ratios=(0.0,), use_legacy_attributes=False) if "use_legacy_attributes" in params else {}


def _labelled(target: Target, x: np.ndarray, case_ids: Sequence[str], table: CaseTable) -> Tuple[np.ndarray,
                                                                                                  np.ndarray]:
    rows = [i for i, c in enumerate(case_ids) if table.value(c, target.name) is not None]
    values = [table.value(case_ids[i], target.name) for i in rows]
    if not rows:
        raise FitError(f"target {target.name!r}: no training case has a label")
    y = np.array([target.classes.index(v) for v in values] if target.is_classification else values,
                 dtype=np.int64 if target.is_classification else np.float64)
    return x[rows], y


def fit_target(target: Target, x: np.ndarray, case_ids: Sequence[str], table: CaseTable, seed: int = 0):
    """The fitted estimator of one target on the labelled rows of ``x`` (rows = ``case_ids``)."""
    xs, y = _labelled(target, x, case_ids, table)
    return make_estimator(target, y, seed).fit(xs, y)


def cv_score(estimator) -> float:
    """The CV score of the chosen regularisation (higher is better): mean negative log-loss over the folds for
    a classification, the negative leave-one-out squared error for a regression."""
    last = estimator[-1]
    if hasattr(last, "best_score_"):
        return float(last.best_score_)
    scores = last.scores_
    scores = np.asarray(next(iter(scores.values())) if isinstance(scores, dict) else scores)
    return float(scores.reshape(scores.shape[0], -1).mean(0).max())


def group_subsets(groups: Sequence[str]) -> list:
    """Every non-empty combination of the pools present, the largest first (a tie keeps more features)."""
    names = [str(g) for g in dict.fromkeys(groups)]
    return [c for n in range(len(names), 0, -1) for c in itertools.combinations(names, n)]


def select_and_fit(target: Target, x: np.ndarray, case_ids: Sequence[str], table: CaseTable, seed: int = 0,
                   groups: Optional[Sequence[str]] = None) -> Tuple[object, np.ndarray, Tuple[str, ...]]:
    """(estimator, used columns, their pools): per combination of the pools in ``groups`` (one per column of
    ``x``; None: all columns, no choice) a CV-regularised fit on the training cases only; the best CV score
    wins. The same CV folds score every combination."""
    if groups is None:
        return fit_target(target, x, case_ids, table, seed), np.ones(x.shape[1], bool), ()
    xs, y = _labelled(target, x, case_ids, table)
    groups = np.asarray(groups)
    if len(groups) != x.shape[1]:
        raise ValueError(f"{len(groups)} feature groups for {x.shape[1]} features")
    best = None
    for subset in group_subsets(groups):
        columns = np.isin(groups, subset)
        estimator = make_estimator(target, y, seed).fit(xs[:, columns], y)
        score = cv_score(estimator)
        if best is None or score > best[0]:
            best = (score, estimator, columns, tuple(subset))
    return best[1], best[2], best[3]


def regularisation(estimator) -> float:
    """The chosen C (classification) or alpha (regression), for reports."""
    last = estimator[-1]
    return float(np.ravel(last.C_)[0]) if hasattr(last, "C_") else float(last.alpha_)


def write_into_head(head: Head, estimator, target: Target, columns: Optional[np.ndarray] = None) -> None:
    """Make ``head`` compute the estimator's probabilities (or values) from the features it reads (``columns``:
    the ones the estimator was fitted on, default all; the others get weight 0)."""
    scaler, linear = estimator[0], estimator[-1]
    width = head.fc.in_features
    columns = np.ones(width, bool) if columns is None else np.asarray(columns, bool)
    fitted = np.atleast_2d(np.asarray(linear.coef_, dtype=np.float64))
    if fitted.shape[1] != columns.sum() or len(columns) != width:
        raise ValueError(f"target {target.name!r}: {fitted.shape[1]} fitted features, the head reads {width}")
    coef = np.zeros((fitted.shape[0], width))
    coef[:, columns] = fitted
    bias = np.atleast_1d(np.asarray(linear.intercept_, dtype=np.float64))
    mean, scale = np.zeros(width), np.ones(width)
    mean[columns], scale[columns] = scaler.mean_, scaler.scale_
    weight = np.zeros((head.num_outputs, width))
    out_bias = np.full(head.num_outputs, ABSENT_LOGIT if target.is_classification else 0.0)
    if not target.is_classification:
        weight[0], out_bias[0] = coef[0], bias[0]
    elif coef.shape[0] == 1:  # binary: predict_proba = sigmoid(d) = softmax(-d/2, +d/2)
        negative, positive = (int(c) for c in linear.classes_)
        weight[positive], out_bias[positive] = coef[0] / 2, bias[0] / 2
        weight[negative], out_bias[negative] = -coef[0] / 2, -bias[0] / 2
    else:
        for row, c in enumerate(linear.classes_):
            weight[int(c)], out_bias[int(c)] = coef[row], bias[row]
    with torch.no_grad():
        head.feature_mean.copy_(torch.as_tensor(mean))
        head.feature_scale.copy_(torch.as_tensor(scale))
        head.feature_count.fill_(int(np.max(scaler.n_samples_seen_)))  # training it further goes on from these
        head.fc.weight.copy_(torch.as_tensor(weight))
        head.fc.bias.copy_(torch.as_tensor(out_bias))
        head.target_mean.fill_(0.0)
        head.target_std.fill_(1.0)


def fit_heads_from_features(heads: Dict[str, Head], spec: TargetSpec, x: np.ndarray, case_ids: Sequence[str],
                            table: CaseTable, seed: int = 0, select_pools: bool = True) -> Dict[str, dict]:
    """Fit every target's head on the feature rows ``x`` of ``case_ids`` (``select_pools``: each target's pools
    chosen by CV); returns per target the chosen regularisation and pools."""
    chosen = {}
    for t in spec:
        groups = heads[t.name].feature_groups if select_pools else None
        estimator, columns, pools = select_and_fit(t, x, case_ids, table, seed, groups)
        write_into_head(heads[t.name], estimator, t, columns)
        chosen[t.name] = {"regularisation": regularisation(estimator), "pools": list(pools)}
    return chosen
