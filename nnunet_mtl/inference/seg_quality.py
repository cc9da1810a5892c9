"""How good a mask probably is, from the stitched logits the engine already has: ``seg_quality``.

Per predicted structure, the soft Dice between its probability map and its predicted mask (the argmax; a
region's sigmoid > 0.5): ``2 sum(p m) / (sum(p) + sum(m))``. Where the model is sure (p near 0 or 1) it is 1;
voxels it hesitates on, inside the structure and along its border, lower it, in the units of the Dice it
estimates. The case's score is the mean over the structures that carry any probability; a case where none
does (a confidently empty mask) scores 1. It cannot see a confident mistake: an input unlike the training
data is ``ood_score``'s job.

The flag's threshold is chosen per fold on its validation cases (``fold_X/seg_quality.json``: the score's
10th percentile there, with how well it ranked their real Dice), the folds' thresholds averaged.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
import torch

from nnunet_mtl.io_utils import atomic_write_json, read_json

FILE_NAME = "seg_quality.json"
PERCENTILE = 10.0   # flags about one validation case in ten
CHUNK = 32          # slices of the first spatial axis per step (bounds the extra memory)
MIN_MASS = 1.0      # a structure with less probability mass (voxels) is absent


@torch.inference_mode()
def seg_quality(logits: torch.Tensor, has_regions: bool = False) -> float:
    """Estimated Dice of the mask nnU-Net exports from these ``[K, *spatial]`` logits (mean over structures)."""
    k = logits.shape[0]
    inter = torch.zeros(k, dtype=torch.float64)
    prob = torch.zeros(k, dtype=torch.float64)
    mask = torch.zeros(k, dtype=torch.float64)
    for start in range(0, logits.shape[1], CHUNK):
        x = logits[:, start:start + CHUNK].float()
        if has_regions or k == 1:
            p = torch.sigmoid(x)
            m = (p > 0.5).float()
        else:
            p = torch.softmax(x, 0)
            m = torch.nn.functional.one_hot(p.argmax(0), k).movedim(-1, 0).float()
        dims = tuple(range(1, x.ndim))
        inter += (p * m).sum(dims).double().cpu()
        prob += p.sum(dims).double().cpu()
        mask += m.sum(dims).double().cpu()
    first = 0 if has_regions or k == 1 else 1  # the background is no structure
    dice = [2 * inter[i] / (prob[i] + mask[i]) for i in range(first, k) if prob[i] + mask[i] >= MIN_MASS]
    return float(np.mean(dice)) if dice else 1.0


def fit_threshold(scores: Sequence[float]) -> dict:
    """The fold's threshold: its validation cases' scores' 10th percentile (None without cases)."""
    scores = np.asarray(scores, dtype=float)
    threshold = float(np.percentile(scores, PERCENTILE)) if scores.size else None
    return {"threshold": threshold, "percentile": PERCENTILE, "n_cases": int(scores.size)}


def write_fold(fold_dir: str, fit: dict) -> None:
    atomic_write_json(os.path.join(fold_dir, FILE_NAME), fit)


def load_threshold(fold_dirs: Sequence[str]) -> Optional[float]:
    """The mean of the folds' thresholds (None when no fold has one)."""
    values = []
    for d in fold_dirs:
        path = os.path.join(d, FILE_NAME)
        if os.path.isfile(path):
            t = read_json(path).get("threshold")
            if t is not None:
                values.append(float(t))
    return float(np.mean(values)) if values else None
