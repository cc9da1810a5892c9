"""Per-stage pooling of encoder features over the tiles of one case.

Every network forward (one tile, or one mirrored copy of it) yields the encoder skips
``[B, C_s, *spatial_s]`` and the segmentation logits ``[B, K, *patch]``. Two pools per stage are
accumulated as sums, so tiles combine the way nnU-Net stitches them (overlaps weighted by the
Gaussian importance map ``g``, resized to the stage's resolution):

* ``global``: ``sum(x * g) / sum(g)``: the Gaussian-weighted mean over the whole case;
* ``foreground``: ``sum(x * g * p) / sum(g * p)`` with ``p`` the model's own predicted foreground
  probability (1 - P(background); max sigmoid for region models), resized to the stage. When the
  model predicts no foreground anywhere it falls back to the global pool.

Mirroring needs no special care: a flipped input gives flipped skips and a flipped ``p``, and
both pools are invariant to the flip (``g`` is symmetric).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

POOLS = ("global", "foreground")
EPS = 1e-6


def foreground_probability(seg_logits: torch.Tensor, has_regions: bool) -> torch.Tensor:
    """[B, K, *spatial] logits -> [B, *spatial] probability that a voxel is foreground."""
    seg = seg_logits.float()
    if has_regions:
        return torch.sigmoid(seg).amax(1)
    return 1.0 - torch.softmax(seg, 1)[:, 0]


def resize_to(weights: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """[B, *spatial] -> [B, *shape] by area averaging (the stage's view of a voxel weight)."""
    if tuple(weights.shape[1:]) == tuple(shape):
        return weights
    return F.interpolate(weights[:, None], size=tuple(shape), mode="area")[:, 0]


def stage_sums(skip: torch.Tensor, importance: torch.Tensor, fg: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Per forward of a batch: both pools' numerators ``[B, C]`` and denominators ``[B]`` at one stage;
    ``importance`` / ``fg``: ``[B, *patch]`` (``fg`` None: the global pool only)."""
    x = skip.float()
    g = resize_to(importance, x.shape[2:])
    sums = {"global_num": (x * g[:, None]).flatten(2).sum(2), "global_den": g.flatten(1).sum(1)}
    if fg is not None:
        gp = g * resize_to(fg, x.shape[2:])
        sums.update(foreground_num=(x * gp[:, None]).flatten(2).sum(2), foreground_den=gp.flatten(1).sum(1))
    return sums


def has_foreground(foreground_den: torch.Tensor, global_den: torch.Tensor) -> torch.Tensor:
    """Whether the predicted foreground carries weight; where it does not, the foreground pool is the global one."""
    return foreground_den > EPS * global_den


class StagePooler:
    """Accumulates the sums of both pools for every stage over the forwards of one case."""

    def __init__(self):
        self.sums: Optional[List[Dict[str, torch.Tensor]]] = None
        self.n_forwards = 0

    def add(self, skips: Sequence[torch.Tensor], fg: torch.Tensor, importance: torch.Tensor) -> None:
        """skips: the encoder's outputs; fg: [B, *patch] foreground probability; importance: [*patch]."""
        if self.sums is None:
            self.sums = [{} for _ in skips]
        imp = importance.to(fg.device, fg.dtype)[None].expand_as(fg)
        for acc, skip in zip(self.sums, skips):
            for k, v in stage_sums(skip, imp, fg).items():
                v = v.sum(0)  # the batch's forwards are tiles / mirrors of the same case
                acc[k] = acc[k] + v if k in acc else v
        self.n_forwards += 1

    def result(self) -> Dict[str, np.ndarray]:
        """{'global_s0': (C0,), 'foreground_s0': (C0,), ..., 'foreground_fraction': ()} as numpy."""
        if self.sums is None:
            raise RuntimeError("no network forward was captured for this case")
        out = {}
        for s, acc in enumerate(self.sums):
            glob = acc["global_num"] / acc["global_den"].clamp_min(EPS)
            fg = (acc["foreground_num"] / acc["foreground_den"]
                  if has_foreground(acc["foreground_den"], acc["global_den"]) else glob)
            out[f"global_s{s}"] = glob.cpu().numpy().astype(np.float32)
            out[f"foreground_s{s}"] = fg.cpu().numpy().astype(np.float32)
        first = self.sums[0]
        out["foreground_fraction"] = np.float32(float(first["foreground_den"]) / max(float(first["global_den"]), EPS))
        return out


def n_stages(pooled: Dict[str, np.ndarray]) -> int:
    return sum(1 for k in pooled if k.startswith("global_s"))


def feature_vector(pooled: Dict[str, np.ndarray], stages: Optional[Sequence[int]] = None,
                   pools: Sequence[str] = POOLS) -> np.ndarray:
    """One case's features: the chosen pools of the chosen stages (negative = from the bottleneck), concatenated."""
    total = n_stages(pooled)
    chosen = range(total) if stages is None else [s % total for s in stages]
    unknown = sorted(set(pools) - set(POOLS))
    if unknown:
        raise ValueError(f"unknown pool(s) {unknown}; use {list(POOLS)}")
    return np.concatenate([pooled[f"{p}_s{s}"] for s in chosen for p in pools]).astype(np.float64)
