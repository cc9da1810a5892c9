"""Image-level heads on encoder features. ``Head`` (base.py) declares the interface; ``PooledHead`` is
the default, ``MaskPooledHead`` pools with the predicted foreground. ``build_heads`` makes one per target."""
from __future__ import annotations

from typing import Sequence, Type

from torch import nn

from nnunet_mtl.model.heads.base import Head
from nnunet_mtl.model.heads.mask_pooled import MaskPooledHead
from nnunet_mtl.model.heads.pooled import PooledHead
from nnunet_mtl.targets import TargetSpec

__all__ = ["Head", "PooledHead", "MaskPooledHead", "build_heads", "resolve_stages"]


def resolve_stages(stages: Sequence[int], n_stages: int) -> tuple:
    """Normalise negative stage indices and check they exist."""
    out = []
    for s in stages:
        idx = s + n_stages if s < 0 else s
        if not 0 <= idx < n_stages:
            raise ValueError(f"encoder stage {s} does not exist (the encoder has {n_stages} stages)")
        out.append(idx)
    return tuple(sorted(set(out)))


def build_heads(spec: TargetSpec, stage_channels: Sequence[int], stages: Sequence[int], dropout: float = 0.2,
                head_class: Type[Head] = PooledHead, seg_activation: str = "softmax") -> nn.ModuleDict:
    """One head per target, keyed by target name, all reading the same encoder stages."""
    stages = resolve_stages(stages, len(stage_channels))
    channels = [stage_channels[s] for s in stages]
    return nn.ModuleDict({t.name: head_class(channels, stages, t.num_outputs, dropout,
                                             regression=not t.is_classification, seg_activation=seg_activation)
                          for t in spec})
