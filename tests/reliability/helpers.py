"""Small builders for the reliability tests: a generic-layout folder, a snapshot of what a folder holds."""
import csv
import hashlib
import os
from typing import Dict, Optional, Sequence

import numpy as np
import SimpleITK as sitk
from PIL import Image


def write_labels(path: str, rows: Sequence[Sequence[str]], header=("case_id", "finding")) -> str:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def png_layout(root: str, masks: Dict[str, np.ndarray], classes: Optional[Dict[str, str]] = None,
               size=(12, 12)) -> str:
    """images/<case>.png (random grey), masks/<case>.png (the given arrays), labels.csv."""
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i, (cid, mask) in enumerate(sorted(masks.items())):
        Image.fromarray(rng.integers(0, 255, size).astype(np.uint8)).save(os.path.join(root, "images", f"{cid}.png"))
        Image.fromarray(np.asarray(mask, np.uint8)).save(os.path.join(root, "masks", f"{cid}.png"))
        rows.append([cid, (classes or {}).get(cid, "yes" if i % 2 else "no")])
    write_labels(os.path.join(root, "labels.csv"), rows)
    return root


def volume_layout(root: str, images: Dict[str, np.ndarray], ext: str = ".nrrd") -> str:
    """images/<case><ext> (the given float arrays; NRRD keeps NaN, SimpleITK reads NaN in NIfTI as 0),
    masks/<case>.nii.gz (a cube of label 1), labels.csv."""
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    rows = []
    for i, (cid, arr) in enumerate(sorted(images.items())):
        sitk.WriteImage(sitk.GetImageFromArray(np.asarray(arr, np.float32)), os.path.join(root, "images", f"{cid}{ext}"))
        mask = np.zeros(np.shape(arr), np.uint8)
        mask[1:3, 1:3, 1:3] = 1
        sitk.WriteImage(sitk.GetImageFromArray(mask), os.path.join(root, "masks", f"{cid}.nii.gz"))
        rows.append([cid, "yes" if i % 2 else "no"])
    write_labels(os.path.join(root, "labels.csv"), rows)
    return root


def binary_mask(size=(12, 12), fg: int = 1) -> np.ndarray:
    m = np.zeros(size, np.uint8)
    m[3:8, 3:8] = fg
    return m


def snapshot(folder: str) -> Dict[str, str]:
    """{relative path: sha256} of every file under ``folder`` (empty when it does not exist)."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out
