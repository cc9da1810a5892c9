"""Losses for the image-level heads and the seg/head weight schedule.

* ``inverse_frequency_weights``: class weights from the training split's counts,
  w_c proportional to (1 / (n_c + s)) ** p, normalised so that their mean over the training
  split's *samples* is 1 (sum_c n_c w_c / N = 1): an average sample keeps weight 1.
* ``HeadWeightSchedule``: a pure function of the epoch. Segmentation first (default
  0.9 seg / 0.1 heads for 20 epochs), then a linear ramp to balance (0.5 / 0.5). The heads
  always get gradient when their weight is above zero: nothing is detached.
* ``HeadLoss``: per-target CE (classification) or smooth L1 on standardised values
  (regression); a sample whose value is missing contributes nothing to that target. Each
  labelled sample's CE is multiplied by its class weight and the sum divided by the number of
  labelled samples, so weighting acts at any batch size. (``F.cross_entropy(weight=w)`` with
  mean reduction divides by the sum of the batch's weights instead: a batch whose samples share
  a class, e.g. batch size 1 or one sample per DDP rank, gets the unweighted gradient.)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from nnunet_mtl.targets import TargetSpec

IGNORE_INDEX = -1


def inverse_frequency_weights(counts: Sequence[int], smoothing: float = 1.0, power: float = 1.0) -> np.ndarray:
    """w_c ~ (1 / (n_c + smoothing)) ** power, scaled so the mean weight over the counted samples is 1."""
    counts = np.asarray(counts, dtype=np.float64)
    if smoothing <= 0 and np.any(counts == 0):
        raise ValueError(f"class counts {counts.tolist()} contain a zero: use a smoothing > 0")
    w = (1.0 / (counts + smoothing)) ** power
    n = counts.sum()
    return w / ((counts * w).sum() / n) if n > 0 else np.ones_like(w)


@dataclass(frozen=True)
class HeadWeightSchedule:
    warmup_epochs: int = 20
    ramp_epochs: int = 30
    head_weight_start: float = 0.1
    head_weight_end: float = 0.5

    def head_weight(self, epoch: int) -> float:
        if epoch < self.warmup_epochs:
            return self.head_weight_start
        if self.ramp_epochs <= 0:
            return self.head_weight_end
        frac = min(1.0, (epoch - self.warmup_epochs + 1) / self.ramp_epochs)
        return self.head_weight_start + frac * (self.head_weight_end - self.head_weight_start)

    def weights(self, epoch: int) -> Tuple[float, float]:
        """(segmentation weight, head weight), summing to 1."""
        h = self.head_weight(epoch)
        return 1.0 - h, h


class HeadLoss(nn.Module):
    """Weighted sum of per-target losses, normalised by the weights of targets present in the batch."""

    def __init__(self, spec: TargetSpec, class_weights: Optional[Mapping[str, Sequence[float]]] = None,
                 regression_beta: float = 1.0):
        super().__init__()
        self.spec = spec
        self.regression_beta = regression_beta
        for t in spec.classification_targets:
            w = (class_weights or {}).get(t.name)
            w = torch.ones(len(t.classes)) if w is None else torch.as_tensor(np.asarray(w), dtype=torch.float32)
            self.register_buffer(f"cw_{t.name}", w.float())

    def forward(self, outputs: Mapping[str, torch.Tensor], targets: Mapping[str, torch.Tensor],
                regression_stats: Optional[Mapping[str, Tuple[float, float]]] = None
                ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        total, weight_sum, parts = None, 0.0, {}
        # heads without a labelled sample in this batch still join the graph with a zero term, so DDP
        # sees a (zero) gradient for every parameter
        unused = sum(o.float().sum() for o in outputs.values()) * 0.0
        for t in self.spec:
            out, y = outputs[t.name].float(), targets[t.name].to(outputs[t.name].device)
            if t.is_classification:
                present = y != IGNORE_INDEX
                if not bool(present.any()) or t.weight == 0:
                    continue
                labels = y[present].long()
                per_sample = F.cross_entropy(out[present], labels, reduction="none")
                loss = (per_sample * getattr(self, f"cw_{t.name}")[labels]).sum() / labels.numel()
            else:
                present = torch.isfinite(y)
                if not bool(present.any()) or t.weight == 0:
                    continue
                mean, std = (regression_stats or {}).get(t.name, (0.0, 1.0))
                z = (y[present].float() - mean) / std
                loss = F.smooth_l1_loss(out[present][:, 0], z, beta=self.regression_beta)
            parts[t.name] = loss.detach()
            total = loss * t.weight if total is None else total + loss * t.weight
            weight_sum += t.weight
        if total is None:  # no labelled sample in this batch
            return unused, parts
        return total / weight_sum + unused, parts
