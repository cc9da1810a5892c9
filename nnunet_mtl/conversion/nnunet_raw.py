"""Write an nnU-Net raw dataset (imagesTr/labelsTr/imagesTs + dataset.json with the ``mtl`` block).

Every input layout ends here, so the checks that protect the user's earlier work live
here once: an existing, different dataset is never overwritten silently, and every
file is written under a temporary name and renamed into place.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_mtl.io_utils import atomic_save_image, atomic_write_json
from nnunet_mtl import dataset_spec
from nnunet_mtl.targets import CaseTable

FILE_ENDING = ".nii.gz"


class DatasetExistsError(FileExistsError):
    """A different dataset already sits where we would write."""


@dataclass
class RawCase:
    """One case in memory: channels as arrays in (z, y, x) / (y, x) order, plus geometry."""
    case_id: str
    channels: List[np.ndarray]
    spacing: Sequence[float]
    mask: Optional[np.ndarray] = None
    origin: Optional[Sequence[float]] = None
    direction: Optional[Sequence[float]] = None
    extra: Dict[str, object] = field(default_factory=dict)


def array_to_image(arr: np.ndarray, spacing, origin=None, direction=None) -> sitk.Image:
    """numpy (z, y, x) or (y, x) -> SimpleITK image; spacing is given in the same (z, y, x) order."""
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing([float(s) for s in spacing][::-1])
    if origin is not None:
        img.SetOrigin([float(o) for o in origin])
    if direction is not None:
        img.SetDirection([float(d) for d in direction])
    return img


def write_image(img: sitk.Image, path: str) -> None:
    atomic_save_image(lambda tmp: sitk.WriteImage(img, tmp, useCompression=True), path)


def dataset_folder_name(dataset_id: int, name: str) -> str:
    return f"Dataset{int(dataset_id):03d}_{name}"


def _check_id_is_free(raw_root: str, dataset_id: int, folder: str) -> None:
    """nnU-Net finds a dataset by its id alone: a second folder with the same id and another name
    would make every later step fail ("more than one dataset name found")."""
    prefix = f"Dataset{int(dataset_id):03d}_"
    taken = sorted(d for d in (os.listdir(raw_root) if os.path.isdir(raw_root) else ())
                   if d.startswith(prefix) and os.path.join(raw_root, d) != folder)
    if taken:
        raise DatasetExistsError(f"{os.path.join(raw_root, taken[0])}: dataset id {int(dataset_id)} is already used "
                                 f"by this dataset; choose another --dataset_id (or --dataset_name "
                                 f"{taken[0][len(prefix):]} to reuse it)")


def _fingerprint(dataset_json: dict) -> str:
    return hashlib.sha256(json.dumps(dataset_json, sort_keys=True).encode()).hexdigest()


def write_raw_dataset(raw_root: str, dataset_id: int, name: str, train_cases: Sequence[RawCase],
                      table: CaseTable, labels: Dict[str, int], channel_names: Dict[str, str],
                      test_cases: Sequence[RawCase] = (), overwrite: bool = False,
                      extra_mtl: Optional[dict] = None, description: str = "") -> str:
    """Write the dataset; return its folder. Idempotent: re-writing the same content is a no-op,
    different content in an existing folder is refused unless ``overwrite``."""
    folder = os.path.join(raw_root, dataset_folder_name(dataset_id, name))
    _check_id_is_free(raw_root, dataset_id, folder)
    table.validate([c.case_id for c in train_cases], source=f"labels of {folder}")
    has_masks = all(c.mask is not None for c in train_cases)
    if not has_masks and any(c.mask is not None for c in train_cases):
        missing = next(c.case_id for c in train_cases if c.mask is None)
        raise ValueError(f"case {missing!r} has no mask while other cases have one")
    extra = dict(extra_mtl or {})
    extra.setdefault("has_masks", has_masks)
    unknown = sorted(set(extra) - set(dataset_spec.DESCRIPTION_KEYS))
    if unknown:
        raise ValueError(f"{folder}: unknown dataset description key {unknown[0]!r} (known: {dataset_spec.DESCRIPTION_KEYS})")
    spec = dataset_spec.build(table, source=f"description of {folder}", **extra)
    dataset_json = {
        "channel_names": channel_names,
        "labels": labels,
        "numTraining": len(train_cases),
        "file_ending": FILE_ENDING,
        "name": name,
        "description": description or "written by nnunet_mtl",
    }
    spec.write_into(dataset_json)
    dj_path = os.path.join(folder, "dataset.json")
    if os.path.isfile(dj_path) and not overwrite:
        with open(dj_path) as f:
            existing = json.load(f)
        if _fingerprint(existing) == _fingerprint(dataset_json) and _files_complete(folder, train_cases, test_cases,
                                                                                   len(channel_names)):
            return folder
        raise DatasetExistsError(f"{folder}: a different dataset already exists here; "
                                 f"choose another dataset id or pass overwrite=True (--overwrite)")
    for sub in ("imagesTr", "labelsTr") + (("imagesTs",) if test_cases else ()):
        os.makedirs(os.path.join(folder, sub), exist_ok=True)
    for case in train_cases:
        _write_case(folder, "imagesTr", case, with_mask=True)
    for case in test_cases:
        _write_case(folder, "imagesTs", case, with_mask=False)
    atomic_write_json(dj_path, dataset_json)  # last: its presence marks a complete dataset
    return folder


def _write_case(folder: str, images_sub: str, case: RawCase, with_mask: bool) -> None:
    for ch, arr in enumerate(case.channels):
        write_image(array_to_image(np.asarray(arr, dtype=np.float32), case.spacing, case.origin, case.direction),
                    os.path.join(folder, images_sub, f"{case.case_id}_{ch:04d}{FILE_ENDING}"))
    if with_mask:
        shape = np.asarray(case.channels[0]).shape
        # no mask: label the whole image 1, so nnU-Net's fingerprint (intensity statistics over
        # foreground voxels) and patch sampling work; the trainer turns the seg loss off (has_masks)
        mask = case.mask if case.mask is not None else np.ones(shape, dtype=np.uint8)
        write_image(array_to_image(np.asarray(mask, dtype=np.uint8), case.spacing, case.origin, case.direction),
                    os.path.join(folder, "labelsTr", f"{case.case_id}{FILE_ENDING}"))


def _files_complete(folder: str, train_cases, test_cases, n_channels: int) -> bool:
    for sub, cases in (("imagesTr", train_cases), ("imagesTs", test_cases)):
        for c in cases:
            for ch in range(n_channels):
                if not os.path.isfile(os.path.join(folder, sub, f"{c.case_id}_{ch:04d}{FILE_ENDING}")):
                    return False
    return all(os.path.isfile(os.path.join(folder, "labelsTr", f"{c.case_id}{FILE_ENDING}")) for c in train_cases)
