"""Mirror the left-right axis *and* swap paired labels, so a flipped left lung stays a left lung.

Plain mirroring along left-right turns the image's left lung into what looks like a right
lung while its label still says "left". Swapping the pair's values with the flip keeps the
rule "the lung on this side is the left one" true, and keeps the augmentation variety.
Non-lateral structures (the heart) are flipped without a swap: the flipped image shows a
situs-inversus-like anatomy, which is the price of this variant.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
from batchgeneratorsv2.transforms.utils.remove_label import RemoveLabelTransform
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform

# the first of these in nnU-Net's pipeline is where label values stop being plain values
_LABEL_VALUE_CONSUMERS = (RemoveLabelTransform, ConvertSegmentationToRegionsTransform, DownsampleSegForDSTransform)


class LabelSwapMirrorTransform(BasicTransform):
    """With probability ``p``, flip spatial ``axis`` (0-based, without the channel axis) of image and
    segmentation and exchange the label values of each (left, right) pair in the segmentation."""

    def __init__(self, axis: int, label_pairs: Sequence[Tuple[int, int]], p: float = 0.5):
        super().__init__()
        self.axis = int(axis)
        self.label_pairs = [(int(a), int(b)) for a, b in label_pairs]
        self.p = float(p)

    def get_parameters(self, **data_dict) -> dict:
        return {"flip": bool(torch.rand(1) < self.p)}

    def _flip(self, t: torch.Tensor) -> torch.Tensor:
        return torch.flip(t, (self.axis + 1,))

    def _apply_to_image(self, img: torch.Tensor, **params) -> torch.Tensor:
        return self._flip(img) if params["flip"] else img

    def _apply_to_regr_target(self, regression_target, **params):
        return self._flip(regression_target) if params["flip"] else regression_target

    def _apply_to_segmentation(self, segmentation, **params):
        if not params["flip"]:
            return segmentation
        if isinstance(segmentation, (list, tuple)):  # deep-supervision targets, if placed after downsampling
            return [self._swap(self._flip(s)) for s in segmentation]
        return self._swap(self._flip(segmentation))

    def _swap(self, seg: torch.Tensor) -> torch.Tensor:
        out = seg.clone()
        for a, b in self.label_pairs:
            out[seg == a] = b
            out[seg == b] = a
        return out


def insert_before_label_consumers(pipeline: ComposeTransforms, transform: BasicTransform) -> ComposeTransforms:
    """Put ``transform`` into nnU-Net's training pipeline where segmentations still hold label
    values: after spatial/intensity/mirror steps, before label removal, regions and DS downsampling."""
    steps: List[BasicTransform] = pipeline.transforms
    for i, step in enumerate(steps):
        if isinstance(step, _LABEL_VALUE_CONSUMERS):
            steps.insert(i, transform)
            return pipeline
    raise ValueError("nnU-Net's training pipeline has no RemoveLabelTransform/regions/downsampling step "
                     "to insert the label-swapping mirror before")
