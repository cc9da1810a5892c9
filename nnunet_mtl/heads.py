"""Image-level heads on encoder features: pool each chosen stage, concatenate, one linear layer.

VGG-style (pool -> flatten(1) -> Linear) so it stays tiny next to the U-Net, works for any
batch size (flatten(1), never squeeze) and is 2D/3D-agnostic (the pool follows the input's rank).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nnunet_mtl.targets import Target, TargetSpec


class PooledHead(nn.Module):
    """Global-average-pool the selected encoder stages and map the concatenation to the outputs.

    Regression heads carry the training split's target mean/std as buffers, so each fold's
    checkpoint converts its own standardised outputs back to original units."""

    def __init__(self, stage_channels: Sequence[int], stages: Sequence[int], num_outputs: int,
                 dropout: float = 0.2, regression: bool = False):
        super().__init__()
        self.stages = tuple(int(s) for s in stages)
        self.regression = regression
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(int(sum(stage_channels)), num_outputs)
        self.register_buffer("target_mean", torch.zeros(1))
        self.register_buffer("target_std", torch.ones(1))

    def forward(self, skips: Sequence[torch.Tensor]) -> torch.Tensor:
        pooled = [skips[s].flatten(2).mean(-1) for s in self.stages]  # (b, c) per stage, any spatial rank
        feats = torch.cat(pooled, 1) if len(pooled) > 1 else pooled[0]
        return self.fc(self.dropout(feats.float()))

    def to_output(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw head output -> class probabilities or a value in original units."""
        if self.regression:
            return raw.float() * self.target_std + self.target_mean
        return torch.softmax(raw.float(), 1)


def resolve_stages(stages: Sequence[int], n_stages: int) -> tuple:
    """Normalise negative stage indices and check they exist."""
    out = []
    for s in stages:
        idx = s + n_stages if s < 0 else s
        if not 0 <= idx < n_stages:
            raise ValueError(f"encoder stage {s} does not exist (the encoder has {n_stages} stages)")
        out.append(idx)
    return tuple(sorted(set(out)))


def build_heads(spec: TargetSpec, stage_channels: Sequence[int], stages: Sequence[int],
                dropout: float = 0.2) -> nn.ModuleDict:
    """One head per target, keyed by target name, all reading the same encoder stages."""
    stages = resolve_stages(stages, len(stage_channels))
    channels = [stage_channels[s] for s in stages]
    return nn.ModuleDict({t.name: _head_for(t, channels, stages, dropout) for t in spec})


def _head_for(target: Target, channels, stages, dropout) -> PooledHead:
    return PooledHead(channels, stages, target.num_outputs, dropout, regression=not target.is_classification)
