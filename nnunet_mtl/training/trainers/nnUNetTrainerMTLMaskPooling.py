"""Heads pool the encoder features with the predicted foreground as weights (plus the global pool),
so the image-level decision looks at the organ/lesion rather than the whole patch
(nnunet_mtl/model/pooling.py). Same stage as the default head: the bottleneck."""
from nnunet_mtl.training.trainers.nnUNetTrainerMTL import nnUNetTrainerMTL


class nnUNetTrainerMTLMaskPooling(nnUNetTrainerMTL):
    head_pools = ("foreground", "global")
