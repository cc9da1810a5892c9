"""Heads read the segmentation's own measurements (per predicted structure its volume, fraction, mean and spread
of the intensity inside; nnunet_mtl/model/pooling.py) beside the bottleneck's global pool: for targets the mask
largely determines (a volume, a size class), where the closed-form read-out with them beat the encoder's pools
alone (docs/benchmarks.md, convergence study)."""
from nnunet_mtl.training.trainers.nnUNetTrainerMTL import nnUNetTrainerMTL


class nnUNetTrainerMTLMeasures(nnUNetTrainerMTL):
    head_pools = ("global", "measures")
