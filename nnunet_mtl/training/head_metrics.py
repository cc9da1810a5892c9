"""Head metrics during training: per-patch predictions in validation steps, reduced per epoch.

These patch-level numbers only drive checkpoint selection and the progress log; the numbers
reported to users are computed on whole cases (``whole_case.py``, ``evaluation.py``).
"""
import math
from typing import Dict, List, Mapping

import numpy as np
import torch
from sklearn.metrics import f1_score

from nnunet_mtl.training.losses import IGNORE_INDEX
from nnunet_mtl.targets import TargetSpec
from nnunet_mtl.training.step_helpers import gather_list


def patch_predictions(network, raw: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor]) -> dict:
    """Lists (so nnU-Net's collate_outputs concatenates them) of predicted and true values per target."""
    preds = network.outputs_to_predictions(raw)
    out = {}
    for name, p in preds.items():
        y = targets[name]
        if p.shape[1] > 1 or not network.heads[name].regression:
            out[f"pred__{name}"] = p.argmax(1).cpu().tolist()
        else:
            out[f"pred__{name}"] = p[:, 0].cpu().tolist()
        out[f"true__{name}"] = y.cpu().tolist()
    return out


def patch_head_metrics(spec: TargetSpec, val_outputs: List[dict], is_ddp: bool,
                       regression_stats: Mapping[str, tuple]) -> Dict[str, float]:
    record, scores = {}, []
    for t in spec:
        pred = np.asarray(gather_list([v for o in val_outputs for v in o[f"pred__{t.name}"]], is_ddp))
        true = np.asarray(gather_list([v for o in val_outputs for v in o[f"true__{t.name}"]], is_ddp))
        if t.is_classification:
            keep = true != IGNORE_INDEX
            if not keep.any():
                continue
            acc = float((pred[keep] == true[keep]).mean())
            f1 = float(f1_score(true[keep], pred[keep], average="macro", zero_division=0))
            record[f"val_{t.name}_acc"], record[f"val_{t.name}_macro_f1"] = acc, f1
            scores.append(f1)
        else:
            keep = np.isfinite(true)
            if not keep.any():
                continue
            mae = float(np.abs(pred[keep] - true[keep]).mean())
            std = regression_stats.get(t.name, (0.0, 1.0))[1]
            record[f"val_{t.name}_mae"] = mae
            scores.append(1.0 / (1.0 + mae / std))
    record["head_score"] = float(np.mean(scores)) if scores else math.nan
    return record
