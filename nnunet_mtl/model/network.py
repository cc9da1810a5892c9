"""MTLNetwork: nnU-Net's own U-Net plus image-level heads fed by the same encoder pass.

It keeps ``encoder`` and ``decoder`` as direct attributes, so state-dict keys match a stock
nnU-Net model (stock weights load with strict=False) and nnU-Net's
``set_deep_supervision_enabled`` (``network.decoder.deep_supervision``) keeps working. Three calls:

* ``forward(x)``: nnU-Net's contract (segmentation only), so stock validation and ``nnUNetv2_predict`` work;
* ``forward(x, with_heads=True)``: ``(seg, {target: raw head output})`` of each sample (a training patch),
  the heads reading that sample's pooled features (a keyword, not a second method, survives DDP/compile);
* ``pooled(x, request)``: ``(seg or None, pool sums)`` of each sample, the inference engine's one call per
  tile; the sums of a case's tiles add up (``pooling``) and ``read`` turns them into the heads' outputs.
  Without a head that reads the segmentation the decoder does not run.
"""
from __future__ import annotations

import hashlib
from typing import Dict, Optional, Sequence, Tuple

import torch
from torch import nn

from nnunet_mtl.model.heads import build_heads
from nnunet_mtl.model.pooling import (PoolRequest, Sums, foreground_probability, measures_width, pool_sums,
                                      structure_probabilities)
from nnunet_mtl.targets import TargetSpec


class MTLNetwork(nn.Module):
    def __init__(self, unet: nn.Module, spec: TargetSpec, head_stages: Sequence[int] = (-1,),
                 head_dropout: float = 0.2, head_pools: Sequence[str] = ("global",),
                 seg_activation: str = "softmax"):
        super().__init__()
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        self.spec = spec
        self.has_regions = seg_activation == "sigmoid"
        n_classes = int(self.decoder.num_classes)
        structures = n_classes if self.has_regions or n_classes == 1 else n_classes - 1
        with torch.random.fork_rng(devices=[]):  # the heads' initialisation leaves the random stream as stock's
            self.heads = build_heads(spec, list(self.encoder.output_channels), head_stages, head_pools, head_dropout,
                                     measures_width(structures, input_channels(self.encoder)), structures)
        self.detach_head_inputs = False     # True: heads learn on the features without training the encoder
        self.capture_heads = False          # when True, a plain forward also stores head outputs
        self.last_head_outputs = None

    @property
    def detach_head_inputs(self) -> bool:
        return self._detach_head_inputs

    @detach_head_inputs.setter
    def detach_head_inputs(self, value: bool) -> None:
        """Heads on detached (fixed) features standardise them with a running scaler (``heads.Head``); with the
        joint gradient they do not: the scaler would multiply the encoder's gradient by 1 / spread (a tiny
        network then no longer learned a blob in 30 steps, tests/test_explain.py)."""
        self._detach_head_inputs = bool(value)
        for head in self.heads.values():
            head.track_feature_stats = self._detach_head_inputs

    @property
    def request(self) -> Optional[PoolRequest]:
        """What the heads read, together (None without heads)."""
        return PoolRequest.union(h.request for h in self.heads.values())

    @property
    def heads_need_segmentation(self) -> bool:
        return any(h.reads_segmentation for h in self.heads.values())

    def forward(self, x: torch.Tensor, with_heads: bool = False):
        skips = self.encoder(x)
        seg = self.decoder(skips)
        if with_heads or self.capture_heads:
            sums = self._sums(skips, seg, self.request, x)
            heads = {name: head(sums) for name, head in self.heads.items()}
            if with_heads:
                return seg, heads
            self.last_head_outputs = heads
        return seg

    def pooled(self, x: torch.Tensor, request: Optional[PoolRequest] = None, with_seg: bool = False,
               weights: Optional[torch.Tensor] = None) -> Tuple[Optional[torch.Tensor], Sums]:
        """Each sample's pool sums (``request``, default what the heads read; none without heads) and, with
        ``with_seg``, the segmentation logits of the same forward (else None; the decoder then runs only
        when the pools read the segmentation). ``weights``: ``[B, *patch]`` voxel weights (``tiling``: a
        tile's share of each voxel of its case); None: every voxel 1, as for a training patch."""
        request = request or self.request
        skips = self.encoder(x)
        needs_seg = with_seg or (request is not None and request.reads_segmentation)
        seg = self.decoder(skips) if needs_seg else None
        sums = {} if request is None else self._sums(skips, seg, request, x, weights)
        return (seg if with_seg else None), sums

    def read(self, sums: Sums) -> Dict[str, torch.Tensor]:
        """Pool sums (one case's, added over its tiles) -> each target's probabilities / value in original units."""
        return {name: head.to_output(head(sums)) for name, head in self.heads.items()}

    def _sums(self, skips, seg, request: PoolRequest, x: torch.Tensor,
              weights: Optional[torch.Tensor] = None) -> Sums:
        seg_hi = seg[0] if isinstance(seg, (list, tuple)) else seg
        if self.detach_head_inputs:
            skips = [s.detach() for s in skips]
        fg = structures = None
        # training: the heads' loss never reaches the segmentation through its own pools; in eval mode the
        # gradient does flow (Grad-CAM of a head that reads only the measures explains them through the decoder)
        seg_read = seg_hi.detach() if self.training and seg_hi is not None else seg_hi
        if "foreground" in request.pools:
            fg = foreground_probability(seg_read, self.has_regions)
        if request.measures:
            structures = structure_probabilities(seg_read, self.has_regions)
        return pool_sums(skips, weights, request, fg, tuple(x.shape[2:]), structures, x.detach())

    def outputs_to_predictions(self, raw: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Raw head outputs -> probabilities (classification) / original units (regression)."""
        return {name: self.heads[name].to_output(v) for name, v in raw.items()}


def input_channels(encoder: nn.Module) -> int:
    """The image channels an encoder reads (its first convolution's input; nnU-Net's encoders do not store it)."""
    conv = next(m for m in encoder.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)))
    return int(conv.in_channels)


def unet_weights_hash(weights: Dict[str, torch.Tensor]) -> str:
    """SHA-256 of the U-Net's tensors in a state dict (the heads left out): what the masks and the pooled
    features depend on; fitting heads and the final validation key their results by it."""
    h = hashlib.sha256()
    for name in sorted(k for k in weights if not k.startswith("heads.")):
        t = weights[name].detach().cpu().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.float().numpy().tobytes() if t.dtype == torch.bfloat16 else t.numpy().tobytes())
    return h.hexdigest()


def unwrap(network: nn.Module) -> nn.Module:
    """The MTLNetwork inside DDP / torch.compile / OpenVINO (``inference.openvino_backend``) wrappers."""
    while True:
        if isinstance(getattr(network, "_modules", {}).get("torch_network"), nn.Module):
            network = network._modules["torch_network"]
        elif hasattr(network, "module") and isinstance(network.module, nn.Module):
            network = network.module
        elif hasattr(network, "_orig_mod"):
            network = network._orig_mod
        else:
            return network
