"""One DICOM Segmentation per case: a segment per structure, frames on the source instances.

Binary by default (a label map in, one segment per nonzero label of nnU-Net's ``dataset.json``
``labels``); fractional (PROBABILITY, 8 bit) from nnU-Net's per-class probabilities. highdicom
takes the geometry from the source instances: per-frame ``ImagePositionPatient`` equal to the
source slices' for a series; for a projection radiograph without a frame of reference, the
segmentation references the one source frame.
"""
from __future__ import annotations

from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from nnunet_mtl import __version__
from nnunet_mtl.outputs.dicom.source import DicomOutputError

MANUFACTURER = "nnunet_mtl"
SERIES_NUMBER = 901
TISSUE = hd.sr.CodedConcept("85756007", "SCT", "Tissue")  # generic category/type: names carry the meaning


def algorithm_identification() -> hd.AlgorithmIdentificationSequence:
    return hd.AlgorithmIdentificationSequence(name="nnunet_mtl", version=__version__,
                                              family=codes.cid7162.ArtificialIntelligence)


def label_segments(label_names: Mapping[str, object]) -> List[Tuple[str, int]]:
    """(name, mask value) per structure from ``dataset.json`` ``labels`` (background and value 0 left out),
    in value order. Region-based label entries (lists) are refused: pass the exported values instead."""
    out = []
    for name, value in label_names.items():
        if isinstance(value, (list, tuple)):
            raise DicomOutputError(f"label {name!r} is a region {list(value)}; pass {{name: value}} of the "
                                   f"exported mask for region-based datasets")
        if int(value) != 0:
            out.append((str(name), int(value)))
    if not out:
        raise DicomOutputError(f"no structures in the labels {dict(label_names)}")
    return sorted(out, key=lambda nv: nv[1])


def segment_descriptions(segments: Sequence[Tuple[str, int]]) -> List[hd.seg.SegmentDescription]:
    algo = algorithm_identification()
    return [hd.seg.SegmentDescription(segment_number=i + 1, segment_label=name[:64],
                                      segmented_property_category=TISSUE, segmented_property_type=TISSUE,
                                      algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                                      algorithm_identification=algo, tracking_id=name[:64],
                                      tracking_uid=generate_uid())
            for i, (name, _) in enumerate(segments)]


def build_seg(datasets: Sequence[Dataset], mask: np.ndarray, label_names: Mapping[str, object], *,
              probabilities: Optional[np.ndarray] = None, series_number: int = SERIES_NUMBER) -> hd.seg.Segmentation:
    """The SEG object (not written).

    Args:
        datasets: source instances in frame order (``source.read_sources``).
        mask: label map ``(frames, rows, columns)`` in source order (``source.mask_in_source_geometry``).
        label_names: ``dataset.json`` ``labels`` (name -> value).
        probabilities: for a fractional SEG, ``(frames, rows, columns, n_classes)`` class probabilities in
            source order, class index = label value (nnU-Net's channel order); None for a binary SEG.
    """
    segments = label_segments(label_names)
    mask = np.asarray(mask)
    if mask.ndim != 3 or mask.shape[0] != len(datasets):
        raise DicomOutputError(f"mask shape {mask.shape}: expected ({len(datasets)}, rows, columns)")
    if probabilities is None:
        known = {v for _, v in segments} | {0}
        unknown = sorted(set(np.unique(mask).tolist()) - known)
        if unknown:
            raise DicomOutputError(f"mask values {unknown} are not in the labels {dict(label_names)}")
        pixels = np.stack([mask == v for _, v in segments], axis=-1).astype(np.uint8)
        seg_type = hd.seg.SegmentationTypeValues.BINARY
    else:
        probs = np.asarray(probabilities, dtype=np.float32)
        if probs.shape[:3] != mask.shape or probs.shape[3] <= max(v for _, v in segments):
            raise DicomOutputError(f"probabilities of shape {probs.shape} do not fit the mask {mask.shape} "
                                   f"and label values {[v for _, v in segments]}")
        pixels = np.clip(np.stack([probs[..., v] for _, v in segments], axis=-1), 0.0, 1.0)
        seg_type = hd.seg.SegmentationTypeValues.FRACTIONAL
    return hd.seg.Segmentation(
        source_images=list(datasets), pixel_array=pixels, segmentation_type=seg_type,
        segment_descriptions=segment_descriptions(segments), series_instance_uid=generate_uid(),
        series_number=series_number, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=MANUFACTURER, software_versions=__version__,
        device_serial_number="0", series_description="nnunet_mtl segmentation", omit_empty_frames=False)


def segment_names(seg_ds: Dataset) -> Dict[int, str]:
    """Segment number -> label of a written SEG."""
    return {int(s.SegmentNumber): str(s.SegmentLabel) for s in seg_ds.SegmentSequence}
