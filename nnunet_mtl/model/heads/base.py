"""What an image-level head is: the interface MTLNetwork and the predictor rely on.

A head reads the encoder's skips (one tensor per stage, highest resolution first) and, when its
class says ``reads_segmentation``, the segmentation logits of the same forward pass (the
highest-resolution output, b x c x spatial). It returns raw outputs (b x num_outputs: logits, or a
standardised value for regression); ``to_output`` turns them into class probabilities or a value
in original units, with the training split's mean/std kept as buffers so each fold's checkpoint
converts its own outputs. A new head is one file with a subclass plus one trainer attribute
(``head_class``).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn


class Head(nn.Module):
    reads_segmentation = False  # True: forward also gets the segmentation logits of the same pass

    def __init__(self, stage_channels: Sequence[int], stages: Sequence[int], num_outputs: int,
                 dropout: float = 0.2, regression: bool = False, seg_activation: str = "softmax"):
        super().__init__()
        self.stages = tuple(int(s) for s in stages)
        self.stage_channels = tuple(int(c) for c in stage_channels)
        self.num_outputs = int(num_outputs)
        self.regression = regression
        self.seg_activation = seg_activation
        self.register_buffer("target_mean", torch.zeros(1))
        self.register_buffer("target_std", torch.ones(1))

    def forward(self, skips: Sequence[torch.Tensor], seg: Optional[torch.Tensor] = None) -> torch.Tensor:
        raise NotImplementedError

    def to_output(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw head output -> class probabilities or a value in original units."""
        if self.regression:
            return raw.float() * self.target_std + self.target_mean
        return torch.softmax(raw.float(), 1)


def global_average(x: torch.Tensor) -> torch.Tensor:
    """(b, c, *spatial) -> (b, c) for any spatial rank; flatten(1)-safe at batch size 1."""
    return x.flatten(2).mean(-1)
