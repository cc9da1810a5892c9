"""Linear probes on frozen encoder features: what the encoder already knows about each target.

Per target, on the training cases only: standardisation, then a logistic regression
(classification, ``class_weight='balanced'``, the inverse regularisation C chosen by stratified
k-fold CV) or a ridge regression (regression, alpha chosen by efficient leave-one-out CV), via
scikit-learn. Predictions have our predictor's shape: ``{target: class probabilities (K,)}`` for
a classification, ``{target: array([value])}`` in original units for a regression, so they go
through ``prediction_table.make_row`` like head outputs.
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, Optional, Sequence

import numpy as np

from nnunet_mtl.frozen.extract import CaseSource, EncoderFeatureExtractor
from nnunet_mtl.model.pooling import POOLS, feature_vector
from nnunet_mtl.targets import CaseTable, Target, TargetSpec

C_GRID = np.logspace(-4, 2, 13)
ALPHA_GRID = np.logspace(-2, 5, 15)


def make_estimator(target: Target, y: np.ndarray, seed: int = 0, max_folds: int = 5):
    """An unfitted scikit-learn pipeline for one target (scaler + CV-regularised linear model)."""
    from sklearn.linear_model import LogisticRegressionCV, RidgeCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    if not target.is_classification:
        return make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHA_GRID))
    smallest = int(np.bincount(y).min()) if len(np.unique(y)) > 1 else 0
    if smallest < 2:
        raise ValueError(f"target {target.name!r}: the probe needs at least 2 training cases of every class "
                         f"present, got counts {np.bincount(y).tolist()}")
    cv = StratifiedKFold(min(max_folds, smallest), shuffle=True, random_state=seed)
    return make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=C_GRID, cv=cv, class_weight="balanced",
                                                                scoring="neg_log_loss", max_iter=5000,
                                                                **_plain_l2_kwargs(LogisticRegressionCV)))


def _plain_l2_kwargs(cls) -> dict:
    """scikit-learn >= 1.8 warns unless the L2-only penalty and the new fitted attributes are explicit;
    older versions do not know these arguments."""
    import inspect
    params = inspect.signature(cls).parameters
    out = {}
    if "use_legacy_attributes" in params:
        out.update(l1_ratios=(0.0,), use_legacy_attributes=False)
    return out


class LinearProbe:
    """One fitted estimator per target, on feature vectors (rows = cases)."""

    def __init__(self, spec: TargetSpec, seed: int = 0):
        self.spec = spec
        self.seed = seed
        self.models = {}
        self.chosen = {}   # target -> chosen regularisation (C or alpha), for reports

    def fit(self, x: np.ndarray, case_ids: Sequence[str], table: CaseTable) -> "LinearProbe":
        for t in self.spec:
            rows = [i for i, c in enumerate(case_ids) if table.value(c, t.name) is not None]
            values = [table.value(case_ids[i], t.name) for i in rows]
            y = np.array([t.classes.index(v) for v in values] if t.is_classification else values,
                         dtype=np.int64 if t.is_classification else np.float64)
            model = make_estimator(t, y, self.seed)
            model.fit(x[rows], y)
            self.models[t.name] = model
            last = model[-1]
            self.chosen[t.name] = float(np.ravel(last.C_)[0]) if t.is_classification else float(last.alpha_)
        return self

    def predict(self, x: np.ndarray, case_ids: Sequence[str]) -> Dict[str, Dict[str, np.ndarray]]:
        out = {c: {} for c in case_ids}
        for t in self.spec:
            model = self.models[t.name]
            if t.is_classification:
                probs = np.zeros((len(case_ids), len(t.classes)))
                probs[:, model[-1].classes_] = model.predict_proba(x)   # a class absent in training keeps 0
                for c, p in zip(case_ids, probs):
                    out[c][t.name] = p
            else:
                for c, v in zip(case_ids, model.predict(x)):
                    out[c][t.name] = np.array([float(v)])
        return out


class FrozenEncoderProbe:
    """Features of a frozen trained model (cached) + linear probes for the targets of its dataset.

    Targets and labels default to the ``mtl`` block of the model folder's ``dataset.json``
    (planning copies it there, for stock trainers too); pass ``spec``/``table`` otherwise.

    Example::

        probe = FrozenEncoderProbe(model_folder, cache_dir="probe_cache")
        probe.fit(preprocessed_cases(data_folder, train_ids))
        predictions = probe.predict(preprocessed_cases(data_folder, test_ids))  # {case: {target: ...}}
    """

    def __init__(self, model_folder: str, folds: Sequence = (0,), checkpoint: str = "checkpoint_final.pth",
                 cache_dir: Optional[str] = None, device: str = "cpu", use_mirroring: bool = False,
                 stages: Optional[Sequence[int]] = None, pools: Sequence[str] = POOLS,
                 spec: Optional[TargetSpec] = None, table: Optional[CaseTable] = None, seed: int = 0):
        self.extractor = EncoderFeatureExtractor(model_folder, folds, checkpoint, cache_dir, device, use_mirroring)
        if spec is None or table is None:
            from nnunet_mtl.dataset_spec import DatasetSpec
            described = DatasetSpec.from_file(os.path.join(model_folder, "dataset.json"))
            spec, table = spec or described.targets, table or described.table
        self.spec, self.table = spec, table
        self.stages, self.pools = stages, tuple(pools)
        self.probe = LinearProbe(spec, seed)

    def matrix(self, sources: Iterable[CaseSource]):
        """(case ids, feature matrix) for these cases, from the cache where possible."""
        feats = self.extractor.features(list(sources))
        ids = sorted(feats)
        return ids, np.stack([feature_vector(feats[c], self.stages, self.pools) for c in ids])

    def fit(self, sources: Iterable[CaseSource]) -> "FrozenEncoderProbe":
        ids, x = self.matrix(sources)
        self.probe.fit(x, ids, self.table)
        return self

    def predict(self, sources: Iterable[CaseSource]) -> Dict[str, Dict[str, np.ndarray]]:
        ids, x = self.matrix(sources)
        return self.probe.predict(x, ids)
