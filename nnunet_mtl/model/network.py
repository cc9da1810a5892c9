"""MTLNetwork: nnU-Net's own U-Net plus image-level heads fed by the same encoder pass.

It keeps ``encoder`` and ``decoder`` as direct attributes, so state-dict keys match a stock
nnU-Net model (stock weights load with strict=False) and nnU-Net's
``set_deep_supervision_enabled`` (``network.decoder.deep_supervision``) keeps working.
``forward(x)`` keeps nnU-Net's contract (segmentation only), so stock validation and
``nnUNetv2_predict`` work unchanged; ``forward(x, with_heads=True)`` returns
``(seg, {target: raw head output})``. A keyword (not a second method) survives DDP/compile wrappers.
"""
from __future__ import annotations

from typing import Dict, Optional, Type

import torch
from torch import nn

from nnunet_mtl.model.heads import Head, PooledHead, build_heads
from nnunet_mtl.targets import TargetSpec


class MTLNetwork(nn.Module):
    def __init__(self, unet: nn.Module, spec: TargetSpec, head_stages=(-1,), head_dropout: float = 0.2,
                 head_class: Optional[Type[Head]] = None, seg_activation: str = "softmax"):
        super().__init__()
        self.encoder = unet.encoder
        self.decoder = unet.decoder
        self.spec = spec
        with torch.random.fork_rng(devices=[]):  # the heads' initialisation leaves the random stream as stock's
            self.heads = build_heads(spec, list(self.encoder.output_channels), head_stages, head_dropout,
                                     head_class or PooledHead, seg_activation)
        self.detach_head_inputs = False     # True: heads learn on the features without training the encoder
        self.capture_heads = False          # when True, a plain forward also stores head outputs
        self.last_head_outputs = None

    def forward(self, x: torch.Tensor, with_heads: bool = False):
        skips = self.encoder(x)
        seg = self.decoder(skips)
        if with_heads or self.capture_heads:
            heads = self.run_heads(skips, seg)
            if with_heads:
                return seg, heads
            self.last_head_outputs = heads
        return seg

    def forward_heads(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Raw head outputs from the encoder alone (no decoder): equal to ``forward(x, True)[1]`` when no head
        ``reads_segmentation`` (``heads_need_segmentation``), at a fraction of the cost."""
        return self.run_heads(self.encoder(x))

    @property
    def heads_need_segmentation(self) -> bool:
        return any(head.reads_segmentation for head in self.heads.values())

    def run_heads(self, skips, seg=None) -> Dict[str, torch.Tensor]:
        """Every head on this pass's skips; heads that read the segmentation get its highest-resolution
        logits (the first deep-supervision output)."""
        seg_hi = seg[0] if isinstance(seg, (list, tuple)) else seg
        if self.detach_head_inputs:
            skips = [s.detach() for s in skips]
            seg_hi = None if seg_hi is None else seg_hi.detach()
        return {name: head(skips, seg_hi) if head.reads_segmentation else head(skips)
                for name, head in self.heads.items()}

    def outputs_to_predictions(self, raw: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Raw head outputs -> probabilities (classification) / original units (regression)."""
        return {name: self.heads[name].to_output(v) for name, v in raw.items()}


def unwrap(network: nn.Module) -> nn.Module:
    """The MTLNetwork inside DDP / torch.compile / OpenVINO (``openvino_backend``) wrappers."""
    while True:
        if isinstance(getattr(network, "_modules", {}).get("torch_network"), nn.Module):
            network = network._modules["torch_network"]
        elif hasattr(network, "module") and isinstance(network.module, nn.Module):
            network = network.module
        elif hasattr(network, "_orig_mod"):
            network = network._orig_mod
        else:
            return network
