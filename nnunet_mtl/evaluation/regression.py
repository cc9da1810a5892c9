"""Regression scores of one target on whole cases: MAE, RMSE, Pearson r, and a bootstrap CI of the MAE."""
from __future__ import annotations

from typing import List

import numpy as np

from nnunet_mtl.evaluation import metrics as M

CI_METHOD = "percentile bootstrap, cases resampled with replacement"


def regression_block(y: np.ndarray, yhat: np.ndarray, n_bootstrap: int, seed: int) -> dict:
    out = M.regression_metrics(y, yhat)
    if n_bootstrap > 0 and len(y):
        out["ci95"] = {"mae": M.bootstrap_ci(lambda a, b: float(np.abs(a - b).mean()), [y, yhat], n_bootstrap, seed)}
        out["ci95_method"] = CI_METHOD
    return out


def per_case_columns(name: str) -> List[str]:
    return [f"{name}_true", f"{name}_pred", f"{name}_abs_error"]


def per_case_values(name: str, y: float, yhat: float) -> dict:
    y, yhat = float(y), float(yhat)
    return dict(zip(per_case_columns(name), (y, yhat, abs(yhat - y))))
