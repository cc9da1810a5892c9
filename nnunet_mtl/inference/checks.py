"""The engine's per-case checks, loaded with the model: what ``nnUNetPredictorMTL`` adds to a case's outputs.

* ``of_logits``: ``seg_quality`` of the stitched logits, with the folds' threshold (``seg_quality``);
* ``of_fold_sums``: the feature distance of one fold's pooled features (``ood``), where every fold has one;
* ``of_files``: the raw image against the dataset fingerprint (``input_check``), for the folder's rows.

The values go into the outputs under ``case_checks``' reserved keys; ``prediction_table`` makes the columns.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from nnunet_mtl import case_checks
from nnunet_mtl.inference import input_check, ood, seg_quality
from nnunet_mtl.model.pooling import Sums, features


@dataclass
class EngineChecks:
    seg_threshold: Optional[float] = None
    feature_checks: Optional[List[ood.FeatureCheck]] = None
    fingerprint: Optional[dict] = None

    @classmethod
    def from_fold_dirs(cls, fold_dirs: Sequence[str]) -> "EngineChecks":
        model_dir = os.path.dirname(os.path.abspath(fold_dirs[0])) if fold_dirs else None
        return cls(seg_quality.load_threshold(fold_dirs), ood.load_folds(fold_dirs),
                   input_check.load_fingerprint(model_dir) if model_dir else None)

    def of_logits(self, logits: torch.Tensor, has_regions: bool) -> Dict[str, np.ndarray]:
        out = {case_checks.RAW_SEG_QUALITY: np.array([seg_quality.seg_quality(logits, has_regions)])}
        if self.seg_threshold is not None:
            out[case_checks.RAW_SEG_THRESHOLD] = np.array([self.seg_threshold])
        return out

    def of_fold_sums(self, fold: int, sums: Sums) -> Dict[str, np.ndarray]:
        if not self.feature_checks or fold >= len(self.feature_checks) or not sums:
            return {}
        check = self.feature_checks[fold]
        x = features(sums, check.stages, check.pools)[0].float().cpu().numpy()
        return {case_checks.RAW_FEATURES: check.ratio(x)}

    def of_files(self, files: Sequence[str], reader_writer_class) -> Dict[str, np.ndarray]:
        return input_check.check_files(files, reader_writer_class, self.fingerprint)
