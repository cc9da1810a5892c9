"""The image-level head: a linear read-out of pooled encoder features, one per target.

``Head`` reads the pools (``pooling``) of chosen encoder stages and maps them linearly to a target's
outputs: ``fc(dropout((features - feature_mean) / feature_scale))``, logits for a classification, a
standardised value for a regression (``to_output`` gives probabilities, or the value in original units
through the training split's ``target_mean`` / ``target_std``). There is one kind of head and two ways to
set it: trained by gradient with the network (the trainers), or fitted in closed form on whole-case
features (``training.fitting``: a scikit-learn logistic / ridge regression written into the head's
scaler and ``fc``). A fitted head is thus a head like any other: predict, classify, Grad-CAM, review
pages and DICOM SR read it through the network.

What a head reads (its stages and pools) is part of its state dict (the ``stages`` / ``pools`` buffers),
so each fold's checkpoint says how its heads read, and loading a checkpoint whose heads read otherwise
than the network was built reshapes the head first (a fitted head reads every stage, a trained one the
bottleneck by default). Checkpoints from before these buffers load as the network was built.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nnunet_mtl.model.pooling import POOLS, PoolRequest, Sums, features, resolve_stages
from nnunet_mtl.targets import TargetSpec

CONFIG_BUFFERS = ("stages", "pools", "feature_mean", "feature_scale")


class Head(nn.Module):
    def __init__(self, encoder_channels: Sequence[int], stages: Sequence[int], pools: Sequence[str],
                 num_outputs: int, dropout: float = 0.2, regression: bool = False):
        super().__init__()
        self.encoder_channels = tuple(int(c) for c in encoder_channels)
        self.num_outputs = int(num_outputs)
        self.regression = regression
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.register_buffer("target_mean", torch.zeros(1))
        self.register_buffer("target_std", torch.ones(1))
        self.configure(stages, pools)

    def configure(self, stages: Sequence[int], pools: Sequence[str]) -> None:
        """Read these stages and pools: a new scaler (identity) and a new ``fc`` of the matching width."""
        stages = resolve_stages(stages, len(self.encoder_channels))
        request = PoolRequest(stages, tuple(pools))  # checks the pool names
        width = sum(self.encoder_channels[s] for s in stages) * len(request.pools)
        device = self.target_mean.device
        self.register_buffer("stages", torch.tensor(stages, dtype=torch.long, device=device))
        self.register_buffer("pools", torch.tensor([POOLS.index(p) for p in pools], dtype=torch.long, device=device))
        self.register_buffer("feature_mean", torch.zeros(width, device=device))
        self.register_buffer("feature_scale", torch.ones(width, device=device))
        self.fc = nn.Linear(width, self.num_outputs, device=device)
        self._stages, self._pools = stages, tuple(pools)

    @property
    def request(self) -> PoolRequest:
        return PoolRequest(tuple(sorted(self._stages)), tuple(p for p in POOLS if p in self._pools))

    @property
    def reads_segmentation(self) -> bool:
        return "foreground" in self._pools

    @property
    def read_config(self) -> dict:
        return {"stages": list(self._stages), "pools": list(self._pools)}

    def features_of(self, sums: Sums) -> torch.Tensor:
        """``[B, F]``: the pools this head reads, in the order its scaler and ``fc`` expect."""
        return features(sums, self._stages, self._pools)

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, F]`` pooled features -> raw outputs ``[B, num_outputs]``."""
        return self.fc(self.dropout((x.float() - self.feature_mean) / self.feature_scale))

    def forward(self, sums: Sums) -> torch.Tensor:
        return self.readout(self.features_of(sums))

    def to_output(self, raw: torch.Tensor) -> torch.Tensor:
        """Raw head output -> class probabilities or a value in original units."""
        if self.regression:
            return raw.float() * self.target_std + self.target_mean
        return torch.softmax(raw.float(), 1)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if prefix + "stages" in state_dict and prefix + "pools" in state_dict:
            stages = tuple(int(s) for s in state_dict[prefix + "stages"].tolist())
            pools = tuple(POOLS[int(p)] for p in state_dict[prefix + "pools"].tolist())
            if (stages, pools) != (self._stages, self._pools):
                self.configure(stages, pools)
        before = len(missing_keys)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        # a checkpoint from before these buffers: the head reads as built, with an identity scaler
        missing_keys[before:] = [k for k in missing_keys[before:] if k[len(prefix):] not in CONFIG_BUFFERS]


def build_heads(spec: TargetSpec, encoder_channels: Sequence[int], stages: Sequence[int], pools: Sequence[str],
                dropout: float = 0.2) -> nn.ModuleDict:
    """One head per target, keyed by target name, all reading the same stages and pools."""
    return nn.ModuleDict({t.name: Head(encoder_channels, stages, pools, t.num_outputs, dropout,
                                       regression=not t.is_classification) for t in spec})
