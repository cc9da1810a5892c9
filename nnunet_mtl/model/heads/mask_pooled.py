"""Mask-guided pooling: encoder features averaged with the predicted foreground as weights.

For each chosen stage, the predicted foreground probability (from the segmentation logits of the
same pass: 1 - softmax background, or the max sigmoid for region-based labels) is area-downsampled
to the stage's resolution and used as pooling weights. Where the foreground mass at that stage is
tiny (below ``min_mass`` voxels' worth) the pool blends smoothly into global average pooling, so an
empty prediction gives the plain pooled features rather than noise. The mask-pooled and the global
features are concatenated before the Linear. The foreground is detached: the head loss does not
push the segmentation to serve the head.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
from torch.nn import functional as F

from nnunet_mtl.model.heads.base import Head, global_average


def foreground_probability(seg_logits: torch.Tensor, activation: str = "softmax") -> torch.Tensor:
    """(b, c, *spatial) logits -> (b, 1, *spatial) probability that a voxel is foreground."""
    logits = seg_logits.float()
    if activation == "sigmoid":  # region-based: the union of the regions
        return torch.sigmoid(logits).amax(1, keepdim=True)
    if logits.shape[1] == 1:
        return torch.sigmoid(logits)
    return 1.0 - torch.softmax(logits, 1)[:, :1]


def masked_average(features: torch.Tensor, weights: torch.Tensor, min_mass: float = 1.0) -> torch.Tensor:
    """Weighted average of (b, c, *s) features with (b, 1, *s') weights (area-resized to *s), blended into
    the plain average where the total weight is below ``min_mass``."""
    if weights.shape[2:] != features.shape[2:]:
        weights = F.adaptive_avg_pool2d(weights, features.shape[2:]) if weights.ndim == 4 \
            else F.adaptive_avg_pool3d(weights, features.shape[2:])
    feats = features.float()
    w = weights.flatten(2)                                   # (b, 1, n)
    mass = w.sum(-1)                                         # (b, 1)
    pooled = (feats.flatten(2) * w).sum(-1) / mass.clamp_min(1e-6)
    alpha = (mass / min_mass).clamp(0.0, 1.0)
    return alpha * pooled + (1 - alpha) * global_average(feats)


class MaskPooledHead(Head):
    reads_segmentation = True

    def __init__(self, stage_channels: Sequence[int], stages: Sequence[int], num_outputs: int,
                 dropout: float = 0.2, regression: bool = False, seg_activation: str = "softmax",
                 min_mass: float = 1.0):
        super().__init__(stage_channels, stages, num_outputs, dropout, regression, seg_activation)
        self.min_mass = float(min_mass)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(2 * int(sum(stage_channels)), num_outputs)

    def forward(self, skips: Sequence[torch.Tensor], seg: Optional[torch.Tensor] = None) -> torch.Tensor:
        fg = None if seg is None else foreground_probability(seg.detach(), self.seg_activation)
        parts = []
        for s in self.stages:
            gap = global_average(skips[s].float())
            # without segmentation logits (e.g. a caller that runs the encoder only) the mask pool is the plain one
            parts += [gap if fg is None else masked_average(skips[s], fg, self.min_mass), gap]
        return self.fc(self.dropout(torch.cat(parts, 1)))
