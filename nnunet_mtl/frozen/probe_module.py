"""A fitted probe as a torch head, so Grad-CAM (``nnunet_mtl.outputs.explain``) can explain it like a jointly trained head.

The probe's score is linear in pooled encoder features, and the pools are weighted means of the stage
feature maps (``pooling``), so the score is differentiable w.r.t. every stage it reads. ``ProbeHead``
pools one tile as ``StagePooler`` pools the tiles of a case (Gaussian weights, the detached predicted
foreground), standardises with the probe's scaler and applies its linear map: per class the logistic
regression's decision function (binary: ``+d`` for the positive class, ``-d`` for the other), for a
regression the ridge prediction. ``ProbeNetwork`` gives it the ``encoder`` / ``decoder`` / ``heads``
an MTL network has, which is all ``explain.HeadLogits`` and ``explain.resolve_stage`` read.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from torch import nn

from nnunet_mtl.model.pooling import EPS, POOLS, foreground_probability, has_foreground, stage_sums
from nnunet_mtl.targets import Target


def _tensor(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=torch.float64)


class ProbeHead(nn.Module):
    """Encoder skips (+ segmentation logits when a pool needs the foreground) of a tile batch -> the
    probe's raw scores ``[B, n_classes]`` (classification) or ``[B, 1]`` (regression)."""

    def __init__(self, estimator, target: Target, n_stages: int, stages: Optional[Sequence[int]],
                 pools: Sequence[str], patch_size: Sequence[int], use_gaussian: bool = True,
                 has_regions: bool = False):
        super().__init__()
        self.stages = sorted({s % n_stages for s in (range(n_stages) if stages is None else stages)})
        self._order = [s % n_stages for s in (range(n_stages) if stages is None else stages)]
        self.pools = tuple(pools)
        unknown = sorted(set(self.pools) - set(POOLS))
        if unknown:
            raise ValueError(f"unknown pool(s) {unknown}; use {list(POOLS)}")
        self.reads_segmentation = "foreground" in self.pools
        self.has_regions = has_regions
        self.n_outputs = len(target.classes) if target.is_classification else 1
        scaler, linear = estimator[0], estimator[-1]
        self.register_buffer("mean", _tensor(scaler.mean_))
        self.register_buffer("scale", _tensor(scaler.scale_))
        self.register_buffer("weight", _tensor(np.atleast_2d(linear.coef_)))      # [K', F]
        self.register_buffer("bias", _tensor(np.atleast_1d(linear.intercept_)))   # [K']
        cols = list(getattr(linear, "classes_", [0])) if target.is_classification else [0]
        self.columns = [int(c) for c in cols]
        self.binary = target.is_classification and self.weight.shape[0] == 1
        from nnunetv2.inference.sliding_window_prediction import compute_gaussian
        patch = tuple(int(p) for p in patch_size)
        g = (compute_gaussian(patch, sigma_scale=1. / 8, value_scaling_factor=10, device=torch.device("cpu"))
             if use_gaussian else torch.ones(patch))
        self.register_buffer("importance", g.float())

    def features(self, skips: Sequence[torch.Tensor], seg: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``[B, F]``: the tile's pools in ``feature_vector`` order (stage by stage, pool by pool)."""
        b = skips[0].shape[0]
        imp = self.importance[None].expand(b, *self.importance.shape)
        fg = None
        if self.reads_segmentation:
            if seg is None:
                raise ValueError("a probe with the foreground pool needs the segmentation logits")
            fg = foreground_probability(seg.detach(), self.has_regions).to(imp.dtype)
        parts = []
        for s in self._order:
            sums = stage_sums(skips[s], imp, fg)
            glob = sums["global_num"] / sums["global_den"].clamp_min(EPS)[:, None]
            pooled = {"global": glob}
            if fg is not None:
                fore = sums["foreground_num"] / sums["foreground_den"].clamp_min(EPS)[:, None]
                pooled["foreground"] = torch.where(
                    has_foreground(sums["foreground_den"], sums["global_den"])[:, None], fore, glob)
            parts.extend(pooled[p] for p in self.pools)
        return torch.cat(parts, 1)

    def linear(self, features: torch.Tensor) -> torch.Tensor:
        """The probe's read-out of ``[B, F]`` features (float64, as scikit-learn computes it)."""
        z = (features.double() - self.mean) / self.scale
        d = z @ self.weight.T + self.bias                      # [B, K'] decision function
        if self.n_outputs == 1:
            return d
        out = torch.zeros(d.shape[0], self.n_outputs, dtype=d.dtype, device=d.device)  # absent classes: 0
        if self.binary:
            out[:, self.columns[1]], out[:, self.columns[0]] = d[:, 0], -d[:, 0]
        else:
            out[:, self.columns] = d
        return out

    def forward(self, skips: Sequence[torch.Tensor], seg: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.linear(self.features(skips, seg)).float()


class ProbeNetwork(nn.Module):
    """A stock network's encoder and decoder with one fold's probes as ``heads`` (the MTL network's shape)."""

    def __init__(self, network: nn.Module, heads: nn.ModuleDict):
        super().__init__()
        self.encoder, self.decoder, self.heads = network.encoder, network.decoder, heads


def probe_heads(probe, n_stages: int, stages: Optional[Sequence[int]], pools: Sequence[str],
                patch_size: Sequence[int], use_gaussian: bool = True, has_regions: bool = False) -> nn.ModuleDict:
    """Every target of a fitted ``LinearProbe`` as a ``ProbeHead``."""
    return nn.ModuleDict({t.name: ProbeHead(probe.models[t.name], t, n_stages, stages, pools, patch_size,
                                            use_gaussian, has_regions) for t in probe.spec})
