"""The sliding window, once: tiles x mirrors x Gaussian stitching, and the pooled features of the same forwards.

Every pass over a case goes through here: the predictor's mask pass (logits stitched as nnU-Net stitches
them, the heads' pool sums taken from the same forwards), the heads-only pass (pool sums alone: classify,
fitting heads) and Grad-CAM (maps stitched like logits, with gradients). The (tile, mirror) inputs of a case
form one stream in nnU-Net's order (tile by tile; per tile no flip first, then each combination of the
allowed axes) that goes through ``forward`` ``tile_batch`` at a time; everything after the forward is
nnU-Net's arithmetic in nnU-Net's order: per tile the mirrors are flipped back and summed in order and
divided by their number, the tile is multiplied by the Gaussian and added to the accumulator. With
``tile_batch`` 1 that is nnU-Net's ``_internal_predict_sliding_window_return_logits`` exactly (same masks,
tested against ``nnUNetv2_predict``); larger batches change only the convolutions' batch (results equal to
about 1e-6).

Image-level features come from each tile's unmirrored forward only: the pools of a mirrored input are not
those of the input (convolutions are not mirror-symmetric), and fitted heads are fitted on unmirrored
passes, so predict, classify and fitting read the same numbers whatever the mask pass mirrors. Each tile
pools with its share of every voxel (``tile_weights``: its Gaussian over the sum of the Gaussians of all the
tiles covering the voxel, nnU-Net's stitching weights), so the case's pools are plain means of its features
as nnU-Net stitches them, and a one-tile case pools exactly as a training patch. ``importance_map`` is the one
place the Gaussian is computed.

Measured on a 2-core AMD EPYC CPU (torch 2.14.1, 2026-12-03): 3D ResEnc case (40x64x64 one tile, 8 mirrors,
32 features) 20.1 s at tile_batch 1, 13.3 s at 8; 2D plain U-Net 256x256 0.54 s at 1, 0.82 s with the
4 mirrors batched. The default stays 1.
"""
from __future__ import annotations

import itertools
from functools import lru_cache
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import torch
from nnunetv2.inference.sliding_window_prediction import compute_gaussian

from nnunet_mtl.model.pooling import Sums, add_sums, case_sums

DEFAULT_TILE_BATCH = 1  # nnU-Net's own loop; larger values are opt-in
# forward(inputs [B, c, *patch], voxel weights [B, *patch]) -> (maps [B, k, *patch] or None, pool sums or None)
Forward = Callable[[torch.Tensor, torch.Tensor], Tuple[Optional[torch.Tensor], Optional[Sums]]]


@lru_cache(maxsize=8)
def importance_map(patch_size: Tuple[int, ...], device: torch.device = torch.device("cpu"),
                   dtype: torch.dtype = torch.half) -> torch.Tensor:
    """nnU-Net's Gaussian importance of a patch (``compute_gaussian``: the weights its sliding window stitches
    tiles with, half precision as nnU-Net computes it), in ``dtype``. Cached: never modify it in place."""
    patch = tuple(int(p) for p in patch_size)
    return compute_gaussian(patch, sigma_scale=1. / 8, value_scaling_factor=10, device=device).to(dtype)


def tile_weights(shape: Sequence[int], slicers: Sequence[tuple], patch_size: Sequence[int], use_gaussian: bool,
                 device: torch.device) -> List[torch.Tensor]:
    """Per tile, its share of each voxel it covers (``[*patch]``, float32): its Gaussian (or 1) over the sum of the
    Gaussians of every tile covering that voxel. The shares of a voxel add up to 1."""
    g = importance_map(tuple(patch_size), device, torch.float32) if use_gaussian else \
        torch.ones(tuple(int(p) for p in patch_size), device=device)
    coverage = torch.zeros(tuple(shape), dtype=torch.float32, device=device)
    for sl in slicers:
        coverage[sl[1:]] += g
    return [(g / coverage[sl[1:]]).reshape(g.shape) for sl in slicers]


def mirror_flips(mirror_axes: Optional[Sequence[int]]) -> List[Tuple[int, ...]]:
    """The flips of one tile, in nnU-Net's order: none first, then each combination of the allowed
    axes (spatial axis numbers; returned as axes of a batched tensor, i.e. + 2)."""
    if not mirror_axes:
        return [()]
    axes = [m + 2 for m in mirror_axes]
    return [()] + [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]


def _flip(x: torch.Tensor, axes: Tuple[int, ...]) -> torch.Tensor:
    return torch.flip(x, axes) if axes else x


def _batches(n_tiles: int, n_flips: int, size: int) -> Iterator[List[Tuple[int, int]]]:
    """(tile, flip) pairs in nnU-Net's order, ``size`` at a time."""
    pairs = ((t, m) for t in range(n_tiles) for m in range(n_flips))
    while True:
        chunk = list(itertools.islice(pairs, max(1, int(size))))
        if not chunk:
            return
        yield chunk


def _tile_means(forward: Forward, data: torch.Tensor, slicers: Sequence[tuple], flips: List[Tuple[int, ...]],
                device: torch.device, tile_batch: int, weights: List[torch.Tensor], on_sums: Callable[[Sums], None]
                ) -> Iterator[Tuple[int, Optional[torch.Tensor]]]:
    """(tile index, its mirror-averaged map or None) strictly in tile order; the unmirrored forwards' pool sums
    (each tile pooled with its ``weights``, flipped with its input) go to ``on_sums``."""
    open_tiles: Dict[int, list] = {}   # tile -> [map sum or None, mirrors seen]
    next_tile = 0
    for chunk in _batches(len(slicers), len(flips), tile_batch):
        x = torch.cat([_flip(data[slicers[t]][None], flips[m]) for t, m in chunk]).to(device)
        w = torch.stack([_flip(weights[t][None], tuple(a - 1 for a in flips[m]))[0] for t, m in chunk]).to(device)
        maps, sums = forward(x, w)
        unflipped = [i for i, (_, m) in enumerate(chunk) if m == 0]
        if sums is not None and unflipped:
            on_sums(case_sums(sums, unflipped))
        for i, (t, m) in enumerate(chunk):
            acc = open_tiles.setdefault(t, [None, 0])
            if maps is not None:
                tile_map = _flip(maps[i:i + 1], flips[m])
                acc[0] = tile_map if acc[0] is None else acc[0].add_(tile_map)  # nnU-Net: prediction += flip(...)
            acc[1] += 1
        while next_tile in open_tiles and open_tiles[next_tile][1] == len(flips):
            total, _ = open_tiles.pop(next_tile)
            if total is not None and len(flips) > 1:
                total /= len(flips)
            yield next_tile, total
            next_tile += 1


def sliding_window(forward: Forward, data: torch.Tensor, slicers: Sequence[tuple], patch_size: Sequence[int],
                   n_channels: int, mirror_axes: Optional[Sequence[int]], use_gaussian: bool, device: torch.device,
                   results_device: torch.device, tile_batch: int = DEFAULT_TILE_BATCH,
                   dtype: torch.dtype = torch.half) -> Tuple[torch.Tensor, Optional[Sums]]:
    """Stitched maps ``(n_channels, *data.shape[1:])`` of a padded case and the case's pool sums (unmirrored
    forwards; None when ``forward`` gives none). ``forward(x, w) -> (maps [B, n_channels, *patch], sums or None)``;
    ``dtype``: the accumulator's (nnU-Net: half for logits)."""
    flips = mirror_flips(mirror_axes)
    data = data.to(results_device)
    stitched = torch.zeros((n_channels, *data.shape[1:]), dtype=dtype, device=results_device)
    weights = torch.zeros(data.shape[1:], dtype=dtype, device=results_device)
    gaussian = importance_map(tuple(patch_size), results_device) if use_gaussian else 1
    shares = tile_weights(data.shape[1:], slicers, patch_size, use_gaussian, device)
    pooled: List[Optional[Sums]] = [None]

    def keep(sums: Sums) -> None:
        pooled[0] = add_sums(pooled[0], sums)

    for t, tile in _tile_means(forward, data, slicers, flips, device, tile_batch, shares, keep):
        prediction = tile[0].to(results_device)
        sl = slicers[t]
        if use_gaussian:
            prediction *= gaussian
        stitched[sl] += prediction
        weights[sl[1:]] += gaussian
    torch.div(stitched, weights, out=stitched)
    if torch.any(torch.isinf(stitched)):
        raise RuntimeError('Encountered inf in predicted array. Aborting... If this problem persists, '
                           'reduce value_scaling_factor in compute_gaussian or increase the dtype of '
                           'predicted_logits to fp32')
    return stitched, pooled[0]


def pooled_window(forward: Forward, data: torch.Tensor, slicers: Sequence[tuple], patch_size: Sequence[int],
                  use_gaussian: bool, device: torch.device, tile_batch: int = DEFAULT_TILE_BATCH) -> Sums:
    """A case's pool sums from each tile's unmirrored forward alone (no maps stitched): what the mask pass of
    ``sliding_window`` pools, at one forward per tile."""
    shares = tile_weights(data.shape[1:], slicers, patch_size, use_gaussian, device)
    pooled: List[Optional[Sums]] = [None]

    def keep(sums: Sums) -> None:
        pooled[0] = add_sums(pooled[0], sums)

    for _ in _tile_means(forward, data, slicers, [()], device, tile_batch, shares, keep):
        pass
    if pooled[0] is None:
        raise RuntimeError("no tile was predicted for this case")
    return pooled[0]
