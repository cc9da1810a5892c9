"""DICOM outputs for cases whose input was DICOM: a Segmentation (SEG) and a structured report (SR).

- ``source``: find and read the source instances, order series slices, map an nnU-Net mask back
  onto the source grid (``mask_in_source_geometry``).
- ``seg``: one SEG per case (binary, or fractional from class probabilities), one segment per label.
- ``sr``: one Comprehensive 3D SR per case (TID 1500) with each target's class / value and probabilities.
- ``writer``: ``write_dicom_outputs`` does all three for one case.

highdicom builds and checks the objects; pydicom writes and reads them.
"""
