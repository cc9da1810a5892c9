"""The default head: global-average-pool the chosen encoder stages, concatenate, dropout, one Linear.

VGG-style (pool -> flatten -> Linear) so it stays tiny next to the U-Net, works at any batch size
and is 2D/3D-agnostic (the pool follows the input's rank)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn

from nnunet_mtl.model.heads.base import Head, global_average


class PooledHead(Head):
    def __init__(self, stage_channels: Sequence[int], stages: Sequence[int], num_outputs: int,
                 dropout: float = 0.2, regression: bool = False, seg_activation: str = "softmax"):
        super().__init__(stage_channels, stages, num_outputs, dropout, regression, seg_activation)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(int(sum(stage_channels)), num_outputs)

    def forward(self, skips: Sequence[torch.Tensor], seg: Optional[torch.Tensor] = None) -> torch.Tensor:
        feats = torch.cat([global_average(skips[s]) for s in self.stages], 1)
        return self.fc(self.dropout(feats.float()))
