"""The image-level head: a linear read-out of pooled encoder features, one per target.

``Head`` reads the pools (``pooling``) of chosen encoder stages and maps them linearly to a target's
outputs: ``fc(dropout((features - feature_mean) / feature_scale))``, logits for a classification, a
standardised value for a regression (``to_output`` gives probabilities, or the value in original units
through the training split's ``target_mean`` / ``target_std``). There is one kind of head and two ways to
set it: trained by gradient with the network (the trainers), or fitted in closed form on whole-case
features (``training.fitting``: a scikit-learn logistic / ridge regression written into the head's
scaler and ``fc``). A head trained by gradient on detached features (``MTLNetwork.detach_head_inputs``, the
trainer's default) standardises them too: in training mode its scaler (``feature_mean`` / ``feature_scale``)
follows running statistics of the pooled features it is given (a cumulative average, then an exponential
one; ``feature_count`` counts the samples, -1: frozen, a head trained before the scaler), frozen in eval mode,
as BatchNorm's. On raw pooled post-norm features (nonzero means, spreads from 0.3 % to 30 % of them) a
gradient-trained head stayed far below the closed-form probe on the same features (AUC 0.55 against 0.94
in tests/test_head_training.py; 0.37-0.65 against 0.84 on real data). A fitted head is thus a head like any
other: predict, classify, Grad-CAM, review pages and DICOM SR read it through the network.

What a head reads (its stages and pools) is part of its state dict (the ``stages`` / ``pools`` buffers),
so each fold's checkpoint says how its heads read, and loading a checkpoint whose heads read otherwise
than the network was built reshapes the head first (a fitted head reads every stage, a trained one the
bottleneck by default). Checkpoints from before these buffers load as the network was built.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from nnunet_mtl.model.pooling import POOLS, STAGE_POOLS, PoolRequest, Sums, feature_groups, features, resolve_stages
from nnunet_mtl.targets import TargetSpec

CONFIG_BUFFERS = ("stages", "pools", "feature_mean", "feature_scale", "feature_count")
STATS_MOMENTUM = 0.01  # the running scaler's weight on a batch once it has seen 1/STATS_MOMENTUM batches' worth
STATS_EPS = 1e-5       # added to the running variance, as BatchNorm's: a near-constant feature is not blown up


class Head(nn.Module):
    def __init__(self, encoder_channels: Sequence[int], stages: Sequence[int], pools: Sequence[str],
                 num_outputs: int, dropout: float = 0.2, regression: bool = False, track_feature_stats: bool = False,
                 measures_width: int = 0, measures_structures: int = 0):
        super().__init__()
        self.encoder_channels = tuple(int(c) for c in encoder_channels)
        self.measures_width = int(measures_width)  # features of the "measures" pool (pooling.measures_width)
        self.measures_structures = int(measures_structures)  # the structures they measure (0: not known)
        self.num_outputs = int(num_outputs)
        self.regression = regression
        self.track_feature_stats = track_feature_stats  # the running scaler (heads on detached features)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.register_buffer("target_mean", torch.zeros(1))
        self.register_buffer("target_std", torch.ones(1))
        self.configure(stages, pools)

    def configure(self, stages: Sequence[int], pools: Sequence[str]) -> None:
        """Read these stages and pools: a new scaler (identity) and a new ``fc`` of the matching width."""
        stages = resolve_stages(stages, len(self.encoder_channels))
        request = PoolRequest(stages, tuple(pools))  # checks the pool names
        if request.measures and not self.measures_width:
            raise ValueError("the measures pool needs the network's structures and input channels (measures_width)")
        width = (sum(self.encoder_channels[s] for s in stages) * len([p for p in request.pools if p in STAGE_POOLS])
                 + (self.measures_width if request.measures else 0))
        device = self.target_mean.device
        self.register_buffer("stages", torch.tensor(stages, dtype=torch.long, device=device))
        self.register_buffer("pools", torch.tensor([POOLS.index(p) for p in pools], dtype=torch.long, device=device))
        self.register_buffer("feature_mean", torch.zeros(width, device=device))
        self.register_buffer("feature_scale", torch.ones(width, device=device))
        self.register_buffer("feature_count", torch.zeros((), dtype=torch.long, device=device))
        self.fc = nn.Linear(width, self.num_outputs, device=device)
        self._stages, self._pools = stages, tuple(pools)

    @property
    def request(self) -> PoolRequest:
        return PoolRequest(tuple(sorted(self._stages)), tuple(p for p in POOLS if p in self._pools))

    @property
    def reads_segmentation(self) -> bool:
        return self.request.reads_segmentation

    @property
    def read_config(self) -> dict:
        return {"stages": list(self._stages), "pools": list(self._pools)}

    @property
    def feature_groups(self) -> tuple:
        """Per column of ``features_of``: its pool, the measures split into their volume and intensity parts
        (``pooling.feature_groups``)."""
        return feature_groups(self.encoder_channels, self._stages, self._pools, self.measures_width,
                              self.measures_structures)

    def features_of(self, sums: Sums) -> torch.Tensor:
        """``[B, F]``: the pools this head reads, in the order its scaler and ``fc`` expect."""
        return features(sums, self._stages, self._pools)

    def readout(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, F]`` pooled features -> raw outputs ``[B, num_outputs]`` (in training mode the scaler first takes
        in this batch)."""
        x, mean, scale = x.float(), self.feature_mean, self.feature_scale
        if self.training and self.track_feature_stats:
            self.update_scaler(x.detach())
            mean, scale = mean.clone(), scale.clone()  # autograd keeps these while the buffers move on
        return self.fc(self.dropout((x - mean) / scale))

    @torch.no_grad()
    def update_scaler(self, x: torch.Tensor) -> None:
        """Pool this batch's mean and variance into the running ones: exactly the cumulative mean / variance of
        every sample seen until a batch's weight would fall below ``STATS_MOMENTUM``, then an exponential average
        (the encoder's features move while the network trains)."""
        n = x.shape[0]
        if n == 0 or int(self.feature_count) < 0:
            return
        w = max(n / (int(self.feature_count) + n), STATS_MOMENTUM)
        mean, var = x.mean(0), x.var(0, unbiased=False)
        old_var = (self.feature_scale ** 2 - STATS_EPS).clamp_min(0)
        delta = mean - self.feature_mean
        new_var = (1 - w) * old_var + w * var + w * (1 - w) * delta ** 2
        self.feature_mean.add_(w * delta)
        self.feature_scale.copy_((new_var + STATS_EPS).sqrt())
        self.feature_count.add_(n)

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
        # a checkpoint from before these buffers: the head reads as built, with an identity scaler (frozen)
        missing_keys[before:] = [k for k in missing_keys[before:] if k[len(prefix):] not in CONFIG_BUFFERS]
        if prefix + "feature_count" not in state_dict:  # trained before the running scaler: its scaler stays
            self.feature_count.fill_(-1)


def build_heads(spec: TargetSpec, encoder_channels: Sequence[int], stages: Sequence[int], pools: Sequence[str],
                dropout: float = 0.2, measures_width: int = 0, measures_structures: int = 0) -> nn.ModuleDict:
    """One head per target, keyed by target name, all reading the same stages and pools."""
    return nn.ModuleDict({t.name: Head(encoder_channels, stages, pools, t.num_outputs, dropout,
                                       regression=not t.is_classification, measures_width=measures_width,
                                       measures_structures=measures_structures)
                          for t in spec})
