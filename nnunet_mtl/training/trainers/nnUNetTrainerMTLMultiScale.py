"""Heads read pooled features of several encoder stages, shallow ones included: public probes
found image-level (subtype) signal stronger in shallow encoder features than at the bottleneck."""
from nnunet_mtl.training.trainers.nnUNetTrainerMTL import nnUNetTrainerMTL


class nnUNetTrainerMTLMultiScale(nnUNetTrainerMTL):
    head_stages = (0, 1, 2, -1)
