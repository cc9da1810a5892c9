"""A target the segmentation does not carry: a texture change inside the hippocampus, on real scans.

For a seeded random half of the cases (``texture = altered``) the voxels inside the reference mask
(anterior + posterior) are multiplied by ``1 + AMPLITUDE * s``, ``s`` a zero-mean 3D sinusoidal pattern
with a period of ``PERIOD`` voxels along every axis (random phase per case); the other half
(``plain``) is unchanged. The masks are not touched, so the mask (and anything measured from it: volume,
shape) carries no information about the class; the mean intensity inside the structure is unchanged in
expectation, its variance rises. Every image is written as float32, altered or not, so the file type
does not tell the class either. The ground truth is known by construction: this is where image features
that segmentation does not need are required, so it is where joint training could help.
"""
from __future__ import annotations

import csv
import os

import numpy as np

AMPLITUDE = 0.15   # relative modulation of the intensity inside the structure ("subtle": 15 %)
PERIOD = 4.0       # voxels (1 mm isotropic scans: 4 mm)
COLUMN = "texture"


def texture_pattern(shape, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean product of sinusoids along each axis, values in [-1, 1]."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in shape], indexing="ij")
    out = np.ones(shape, dtype=np.float32)
    for g in grids:
        out *= np.sin(2 * np.pi * g / PERIOD + rng.uniform(0, 2 * np.pi)).astype(np.float32)
    return out


def write_layout(data: str, out: str, seed: int) -> str:
    """``data``'s generic layout (images/, masks/, labels.csv) copied to ``out`` with a ``texture`` column
    first (``altered`` for a random half, seeded); reused when ``out`` is complete for the same seed."""
    import SimpleITK as sitk
    marker = os.path.join(out, "appearance_target.txt")
    stamp = f"seed={seed} amplitude={AMPLITUDE} period={PERIOD}\n"
    if os.path.isfile(marker) and open(marker).read() == stamp:
        return out
    with open(os.path.join(data, "labels.csv")) as f:
        rows = list(csv.DictReader(f))
    rng = np.random.default_rng(seed)
    altered = set(rng.permutation([r["case_id"] for r in rows])[: len(rows) // 2].tolist())
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(out, sub), exist_ok=True)
    for r in rows:
        name = r["case_id"] + ".nii.gz"
        image = sitk.ReadImage(os.path.join(data, "images", name))
        mask = sitk.ReadImage(os.path.join(data, "masks", name))
        arr = sitk.GetArrayFromImage(image).astype(np.float32)
        if r["case_id"] in altered:
            inside = sitk.GetArrayFromImage(mask) > 0
            arr = np.where(inside, arr * (1 + AMPLITUDE * texture_pattern(arr.shape, rng)), arr).astype(np.float32)
        written = sitk.GetImageFromArray(arr)
        written.CopyInformation(image)
        sitk.WriteImage(written, os.path.join(out, "images", name))
        sitk.WriteImage(mask, os.path.join(out, "masks", name))
        r[COLUMN] = "altered" if r["case_id"] in altered else "plain"
    with open(os.path.join(out, "labels.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case_id", COLUMN] + [k for k in rows[0] if k not in ("case_id", COLUMN)])
        w.writeheader()
        w.writerows(rows)
    with open(marker, "w") as f:
        f.write(stamp)
    return out
