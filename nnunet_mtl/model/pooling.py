"""Pooled encoder features: the one definition of what an image-level head reads.

Every forward (a training patch, or one tile of a case) gives the encoder skips ``[B, C_s, *spatial_s]``
and the segmentation logits ``[B, K, *patch]``. Per encoder stage, two pools of the feature map:

* ``global``: ``sum(x * w) / sum(w)``, the mean of the features;
* ``foreground``: ``sum(x * w * p) / sum(w * p)``, ``p`` the same forward's predicted foreground
  probability (1 - P(background); the max sigmoid for region labels), detached; where the predicted
  foreground carries no weight, the global pool.

and one pool that reads no encoder stage, the segmentation's own measurements (``measures``): per predicted
structure ``k`` (its probability ``p_k``, detached) the soft voxel count ``sum(w * p_k)`` (a case's volume in
the configuration's voxels), its fraction of the input ``sum(w * p_k) / sum(w)``, and per input channel the
mean and standard deviation of the image inside it (weights ``w * p_k``). On targets the mask determines
(a volume, a size class) a linear read-out of these beats one of the encoder's pools; they add up over tiles
like the others.

``w`` is a voxel weight per sample (area-resized to each stage): 1 for a training patch; for the tiles
of a case, the sliding window's share of each voxel (``tiling``: nnU-Net's Gaussian of the tile over the
sum of the Gaussians of every tile covering the voxel), so a case's pools are the plain means of its
features as nnU-Net stitches them, and a case of one tile is pooled exactly as a training patch. The pools
are kept as sums (numerators and denominators), which add over tiles: a whole case's features are its
tiles' sums added up and then divided, with the very function that gives one patch's features in training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

POOLS = ("global", "foreground", "measures")
STAGE_POOLS = ("global", "foreground")  # the pools of an encoder stage; "measures" reads the segmentation
EPS = 1e-6
Sums = Dict[str, torch.Tensor]  # "{pool}_num_s{stage}": [B, C_s], "{pool}_den_s{stage}": [B]


def foreground_probability(seg_logits: torch.Tensor, has_regions: bool) -> torch.Tensor:
    """``[B, K, *spatial]`` logits -> ``[B, *spatial]`` probability that a voxel is foreground."""
    seg = seg_logits.float()
    if has_regions:
        return torch.sigmoid(seg).amax(1)
    if seg.shape[1] == 1:
        return torch.sigmoid(seg)[:, 0]
    return 1.0 - torch.softmax(seg, 1)[:, 0]


@dataclass(frozen=True)
class PoolRequest:
    """Which stages (absolute indices) and pools a reader needs; ``|`` merges two requests."""
    stages: Tuple[int, ...]
    pools: Tuple[str, ...]

    def __post_init__(self):
        unknown = sorted(set(self.pools) - set(POOLS))
        if unknown:
            raise ValueError(f"unknown pool(s) {unknown}; use {list(POOLS)}")

    def __or__(self, other: "PoolRequest") -> "PoolRequest":
        return PoolRequest(tuple(sorted(set(self.stages) | set(other.stages))),
                           tuple(p for p in POOLS if p in self.pools or p in other.pools))

    @property
    def reads_segmentation(self) -> bool:
        return "foreground" in self.pools or "measures" in self.pools

    @property
    def measures(self) -> bool:
        return "measures" in self.pools

    @classmethod
    def union(cls, requests: Iterable["PoolRequest"]) -> Optional["PoolRequest"]:
        out = None
        for r in requests:
            out = r if out is None else out | r
        return out


def resolve_stages(stages: Optional[Sequence[int]], n_stages: int) -> Tuple[int, ...]:
    """Stage indices (negative: from the bottleneck; None: all) as absolute indices, checked, in order given."""
    if stages is None:
        return tuple(range(n_stages))
    out = []
    for s in stages:
        idx = int(s) + n_stages if int(s) < 0 else int(s)
        if not 0 <= idx < n_stages:
            raise ValueError(f"encoder stage {s} does not exist (the encoder has {n_stages} stages)")
        if idx not in out:
            out.append(idx)
    return tuple(out)


def _resize(weights: torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """``[B, *spatial]`` -> ``[B, *shape]`` by area averaging (the stage's view of a voxel weight)."""
    if tuple(weights.shape[1:]) == tuple(shape):
        return weights
    return F.interpolate(weights[:, None], size=tuple(shape), mode="area")[:, 0]


def sum_keys(request: PoolRequest) -> Tuple[str, ...]:
    """The keys of ``pool_sums`` for a request, in a fixed order (a compiled graph's outputs follow it)."""
    pools = ("global",) + (("foreground",) if "foreground" in request.pools else ())
    keys = tuple(f"{p}_{part}_s{s}" for s in request.stages for p in pools for part in ("num", "den"))
    return keys + (MEASURE_KEYS if request.measures else ())


MEASURE_KEYS = ("measures_den", "measures_vol", "measures_int", "measures_sq")


def measures_width(n_structures: int, in_channels: int) -> int:
    """Features of the ``measures`` pool: volume and fraction per structure, mean and spread per channel."""
    return n_structures * (2 + 2 * in_channels)


def structure_probabilities(seg_logits: torch.Tensor, has_regions: bool) -> torch.Tensor:
    """``[B, K, *spatial]`` logits -> ``[B, S, *spatial]`` probability of each predicted structure (the
    softmax without the background; every region's sigmoid)."""
    seg = seg_logits.float()
    if has_regions or seg.shape[1] == 1:
        return torch.sigmoid(seg)
    return torch.softmax(seg, 1)[:, 1:]


def pool_sums(skips: Sequence[torch.Tensor], weights: Optional[torch.Tensor], request: PoolRequest,
              foreground: Optional[torch.Tensor] = None, patch: Optional[Sequence[int]] = None,
              structures: Optional[torch.Tensor] = None, image: Optional[torch.Tensor] = None) -> Sums:
    """Per sample of a batch, the requested pools' numerators and denominators at the requested stages.
    ``weights``: ``[B, *patch]`` voxel weights (None: 1 everywhere on ``patch``, the input's spatial shape);
    ``foreground``: ``[B, *patch]`` (needed when the foreground pool is asked); ``structures`` ``[B, S, *patch]``
    (``structure_probabilities``) and ``image`` ``[B, C, *patch]`` (needed for the measures)."""
    b = skips[0].shape[0]
    if weights is None:
        weights = torch.ones((b, *(patch or foreground.shape[1:])), device=skips[0].device)
    imp = weights.to(skips[0].device, torch.float32)
    if "foreground" in request.pools and foreground is None:
        raise ValueError("the foreground pool needs the segmentation logits of the same forward")
    sums = {}
    for s in request.stages:
        x = skips[s].float()
        g = _resize(imp, x.shape[2:])
        sums[f"global_num_s{s}"] = (x * g[:, None]).flatten(2).sum(2)
        sums[f"global_den_s{s}"] = g.flatten(1).sum(1)
        if "foreground" in request.pools:
            gp = g * _resize(foreground.float(), x.shape[2:])
            sums[f"foreground_num_s{s}"] = (x * gp[:, None]).flatten(2).sum(2)
            sums[f"foreground_den_s{s}"] = gp.flatten(1).sum(1)
    if request.measures:
        if structures is None or image is None:
            raise ValueError("the measures need the segmentation logits and the input of the same forward")
        sums.update(_measure_sums(imp, structures.to(imp.device, torch.float32), image.to(imp.device, torch.float32)))
    return sums


def _measure_sums(w: torch.Tensor, probs: torch.Tensor, image: torch.Tensor) -> Sums:
    wp = (w[:, None] * probs).flatten(2)                                   # [B, S, V]
    img = image.flatten(2)                                                 # [B, C, V]
    return {"measures_den": w.flatten(1).sum(1), "measures_vol": wp.sum(2),
            "measures_int": torch.einsum("bsv,bcv->bsc", wp, img).flatten(1),
            "measures_sq": torch.einsum("bsv,bcv->bsc", wp, img * img).flatten(1)}


def add_sums(total: Optional[Sums], sums: Sums) -> Sums:
    """Accumulate per-case sums (``sums`` already summed over its batch, or per sample: added as they are)."""
    if total is None:
        return {k: v.clone() for k, v in sums.items()}
    return {k: total[k] + sums[k] for k in total}


def case_sums(sums: Sums, rows: Optional[Sequence[int]] = None) -> Sums:
    """A batch's per-sample sums (the chosen ``rows``, default all) added into one sample's ``[1, ...]``."""
    return {k: (v if rows is None else v[list(rows)]).sum(0, keepdim=True) for k, v in sums.items()}


def features(sums: Sums, stages: Sequence[int], pools: Sequence[str]) -> torch.Tensor:
    """``[B, F]``: the pools of the stages, stage by stage, pool by pool (the order fitted heads are fitted in)."""
    parts = []
    for s in stages:
        glob = sums[f"global_num_s{s}"] / sums[f"global_den_s{s}"].clamp_min(EPS)[:, None]
        for p in pools:
            if p == "measures":
                continue
            if p == "global":
                parts.append(glob)
            else:
                den = sums[f"foreground_den_s{s}"]
                fore = sums[f"foreground_num_s{s}"] / den.clamp_min(EPS)[:, None]
                parts.append(torch.where((den > EPS * sums[f"global_den_s{s}"])[:, None], fore, glob))
    if "measures" in pools:
        parts.append(measure_features(sums))
    return torch.cat(parts, 1)


def feature_groups(encoder_channels: Sequence[int], stages: Sequence[int], pools: Sequence[str],
                   n_measures: int, n_structures: int = 0) -> Tuple[str, ...]:
    """What each column of ``features`` is (same order), so a fit can choose what a target reads: the stage pools
    by name; the measures as ``measures_volume`` (volume and fraction per structure, the first ``2 *
    n_structures`` columns) and ``measures_intensity`` (the image's mean and spread inside), or as one
    ``measures`` group when ``n_structures`` is not known."""
    groups = [p for s in stages for p in pools if p != "measures" for _ in range(int(encoder_channels[s]))]
    if "measures" in pools:
        n_volume = min(2 * int(n_structures), int(n_measures))
        groups += (["measures_volume"] * n_volume + ["measures_intensity"] * (int(n_measures) - n_volume)
                   if n_volume else ["measures"] * int(n_measures))
    return tuple(groups)


def measure_features(sums: Sums) -> torch.Tensor:
    """``[B, S * (2 + 2C)]``: per structure its voxel count and fraction, then per channel mean and spread."""
    vol = sums["measures_vol"]                                             # [B, S]
    b, n = vol.shape
    mean = sums["measures_int"].view(b, n, -1) / vol.clamp_min(EPS)[..., None]
    var = (sums["measures_sq"].view(b, n, -1) / vol.clamp_min(EPS)[..., None] - mean * mean).clamp_min(0)
    frac = vol / sums["measures_den"].clamp_min(EPS)[:, None]
    return torch.cat([vol, frac, mean.flatten(1), var.sqrt().flatten(1)], 1)
