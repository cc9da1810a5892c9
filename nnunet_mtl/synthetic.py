"""Seeded synthetic datasets for the demo and the tests.

* ``radiograph_cases``: 2D chest-radiograph-like images (body outline, lungs, heart) with a
  subtle image-level finding (a thin band of free air under the right hemidiaphragm).
* ``pancreas_cases``: 3D CT-like volumes in the pancreas-challenge layout: organ label 1,
  lesion label 2 inside it, three subtypes that differ in lesion *texture* (homogeneous,
  cystic with a bright rim, speckled) at similar mean intensity, so the class is not a
  threshold on brightness.

Both return in-memory ``RawCase`` lists plus a ``CaseTable``; writers put them on disk in
nnU-Net raw format or in the user-facing layouts the pipeline converts from.
"""
from __future__ import annotations

import csv
import json
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from nnunet_mtl.conversion.nnunet_raw import RawCase, array_to_image, write_image, write_raw_dataset
from nnunet_mtl.targets import CLASSIFICATION, REGRESSION, CaseTable, Target, TargetSpec

SUBTYPES = ("subtype0", "subtype1", "subtype2")
FINDING_CLASSES = ("absent", "present")


def _ellipse(shape, center, radii) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    acc = 0
    for g, c, r in zip(grids, center, radii):
        acc = acc + ((g - c) / max(r, 1e-3)) ** 2
    return acc <= 1.0


# ----------------------------------------------------------------------------------------------- 2D
def radiograph_labels(lateral: bool) -> dict:
    if lateral:
        return {"background": 0, "left_lung": 1, "right_lung": 2, "heart": 3}
    return {"background": 0, "lung": 1, "heart": 2}


def make_radiograph(rng: np.random.Generator, size: Tuple[int, int], finding: bool,
                    lateral: bool = False, symmetric: bool = False) -> Tuple[np.ndarray, np.ndarray, float]:
    """One image (float32, y/x), its mask, and a continuous 'heart size' measure for regression demos.

    Patient left is image right (radiological convention); the heart sits patient-left.
    ``symmetric`` removes every anatomical side cue: the heart is centred (x = w * 0.5), both
    lungs have the same size and the free-air crescent (``finding``) lies under both lungs, so
    only the position in the image tells left from right. The random draws are the same either
    way; the default (False) gives exactly the images it always gave."""
    h, w = size
    img = np.zeros(size, np.float32)
    mask = np.zeros(size, np.uint8)
    jitter = lambda s: rng.uniform(-s, s)
    body = _ellipse(size, (h * (0.52 + jitter(0.03)), w * (0.5 + jitter(0.03))),
                    (h * (0.46 + jitter(0.03)), w * (0.42 + jitter(0.03))))
    img[body] = 0.55
    lung_ry, lung_rx = h * (0.22 + jitter(0.02)), w * (0.12 + jitter(0.015))
    cy = h * (0.42 + jitter(0.03))
    right_lung = _ellipse(size, (cy, w * (0.31 + jitter(0.02))), (lung_ry, lung_rx))  # patient right = image left
    left_lung = _ellipse(size, (cy, w * (0.69 + jitter(0.02))), (lung_ry * (1.0 if symmetric else 0.93), lung_rx))
    heart_r = rng.uniform(0.08, 0.14)
    heart_cy, heart_dx = h * (0.55 + jitter(0.02)), jitter(0.02)
    heart_cx = w * (0.5 if symmetric else 0.58 + heart_dx)
    heart = _ellipse(size, (heart_cy, heart_cx), (h * heart_r, w * heart_r * 1.1))
    img[right_lung | left_lung] = 0.18
    img[heart] = 0.75
    if lateral:
        mask[left_lung] = 1
        mask[right_lung] = 2
        mask[heart] = 3
    else:
        mask[right_lung | left_lung] = 1
        mask[heart] = 2
    if finding:
        # thin crescent of free air just below the right hemidiaphragm
        yy, xx = np.ogrid[:h, :w]
        base_y = cy + lung_ry + h * 0.03
        band = np.zeros(size, bool)
        for cx in ((w * 0.31, w * 0.69) if symmetric else (w * 0.31,)):
            band |= (np.abs(yy - (base_y + ((xx - cx) / (w * 0.14)) ** 2 * h * 0.02)) < max(1.0, h * 0.03)) \
                & (np.abs(xx - cx) < w * 0.12)
        band &= body & ~heart
        img[band] -= 0.3
    img += rng.normal(0, 0.05, size).astype(np.float32)
    img = np.clip(img, 0, 1) * 1000.0  # radiograph-like grey values
    return img.astype(np.float32), mask, float(heart_r * 100)


def radiograph_cases(n: int, size: Tuple[int, int] = (64, 64), seed: int = 0, lateral: bool = False,
                     extra_targets: bool = False, without_masks: bool = False, prefix: str = "cxr",
                     symmetric: bool = False) -> Tuple[List[RawCase], CaseTable]:
    """n cases, classes balanced (alternating), deterministic for a seed.

    ``extra_targets`` adds a second classification target (cardiomegaly: heart radius above
    the median of the range) and a regression target correlated with a visible feature
    (heart_size, missing for every fifth case); ``without_masks`` drops the masks; ``symmetric``
    (see ``make_radiograph``) leaves no anatomical left/right cue."""
    rng = np.random.default_rng(seed)
    cases, rows = [], {}
    for i in range(n):
        finding = bool(i % 2)
        img, mask, heart_size = make_radiograph(rng, size, finding, lateral, symmetric)
        cid = f"{prefix}_{i:03d}"
        cases.append(RawCase(cid, [img], spacing=(0.5, 0.5), mask=None if without_masks else mask))
        rows[cid] = {"finding": FINDING_CLASSES[int(finding)]}
        if extra_targets:
            rows[cid]["cardiomegaly"] = "yes" if heart_size > 11.0 else "no"
            rows[cid]["heart_size"] = None if i % 5 == 4 else heart_size
    targets = [Target("finding", CLASSIFICATION, classes=FINDING_CLASSES)]
    if extra_targets:
        targets.append(Target("cardiomegaly", CLASSIFICATION, classes=("no", "yes"), weight=0.5))
        targets.append(Target("heart_size", REGRESSION, weight=0.5, allow_missing=True, unit="% of image height"))
    return cases, CaseTable.from_mapping(TargetSpec(tuple(targets)), rows)


# ----------------------------------------------------------------------------------------------- 3D
def make_pancreas_volume(rng: np.random.Generator, shape: Tuple[int, int, int], subtype: int,
                         lesion_center: Optional[Sequence[float]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """A CT-like volume in HU (z, y, x) and its mask: 1 pancreas, 2 lesion."""
    z, y, x = shape
    vol = np.full(shape, -1000.0, np.float32)
    body = _ellipse(shape, (z / 2, y / 2, x / 2), (z * 0.6, y * 0.45, x * 0.47))
    vol[body] = 30.0
    pc = np.array([z * rng.uniform(0.4, 0.6), y * rng.uniform(0.42, 0.58), x * rng.uniform(0.42, 0.58)])
    pr = np.array([z * 0.28, y * 0.16, x * 0.33]) * rng.uniform(0.9, 1.1, 3)
    pancreas = _ellipse(shape, pc, pr)
    vol[pancreas] = 100.0
    lr = max(2.0, min(pr) * rng.uniform(0.55, 0.7))
    if lesion_center is None:
        lesion_center = pc + rng.uniform(-0.3, 0.3, 3) * (pr - lr).clip(0)
    lesion = _ellipse(shape, lesion_center, (lr, lr, lr)) & pancreas
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grids, lesion_center)))
    if subtype == 0:    # homogeneous hypodense
        vol[lesion] = 45.0
    elif subtype == 1:  # cystic: dark core inside a rim (same mean as the others)
        core = lesion & (dist < lr * 0.75)
        vol[lesion] = 80.0
        vol[core] = 10.0
    else:               # speckled: strong texture around a similar mean
        vol[lesion] = 55.0 + rng.choice([-45.0, 45.0], size=int(lesion.sum()))
    vol += rng.normal(0, 12.0, shape).astype(np.float32)
    mask = np.zeros(shape, np.uint8)
    mask[pancreas] = 1
    mask[lesion] = 2
    return vol.astype(np.float32), mask


def pancreas_cases(n: int, shape: Tuple[int, int, int] = (24, 40, 40), seed: int = 0,
                   spacing: Tuple[float, float, float] = (2.0, 1.0, 1.0), prefix: str = "pancreas"
                   ) -> Tuple[List[RawCase], CaseTable]:
    rng = np.random.default_rng(seed)
    cases, rows = [], {}
    for i in range(n):
        subtype = i % 3
        vol, mask = make_pancreas_volume(rng, shape, subtype)
        cid = f"{prefix}_{i:03d}"
        cases.append(RawCase(cid, [vol], spacing=spacing, mask=mask))
        rows[cid] = {"subtype": SUBTYPES[subtype]}
    spec = TargetSpec((Target("subtype", CLASSIFICATION, classes=SUBTYPES),))
    return cases, CaseTable.from_mapping(spec, rows)


# ------------------------------------------------------------------------------------------ writers
def write_synthetic_raw(raw_root: str, dataset_id: int, kind: str = "2d", n: int = 12, seed: int = 0,
                        n_test: int = 0, **kwargs) -> str:
    """Write a synthetic dataset straight into nnU-Net raw format (for tests and the Python API)."""
    if kind == "2d":
        lateral = kwargs.pop("lateral", False)
        cases, table = radiograph_cases(n + n_test, seed=seed, lateral=lateral, **kwargs)
        labels, name, channels = radiograph_labels(lateral), "SynthCXR", {"0": "rescale_to_0_1"}
        if kwargs.get("without_masks"):  # nnU-Net still needs a foreground label; the masks are empty
            labels, name = {"background": 0, "foreground": 1}, "SynthCXRNoMasks"
    elif kind == "3d":
        cases, table = pancreas_cases(n + n_test, seed=seed, **kwargs)
        labels, name, channels = {"background": 0, "pancreas": 1, "lesion": 2}, "SynthPancreas", {"0": "CT"}
    else:
        raise ValueError(f"unknown synthetic kind {kind!r} (use '2d' or '3d')")
    train, test = cases[:n], cases[n:]
    table = CaseTable(table.spec, {c.case_id: table.values[c.case_id] for c in train})
    extra = {"regions": {"whole": [1, 2], "lesion": [2]}} if kind == "3d" else None
    return write_raw_dataset(raw_root, dataset_id, name, train, table, labels, channels, test_cases=test,
                             extra_mtl=extra)


def write_pancreas_layout(root: str, n_train: int = 9, n_val: int = 3, n_test: int = 3,
                          shape=(24, 40, 40), seed: int = 0) -> str:
    """The seed challenge layout: train|validation/subtypeK/NAME_0000.nii.gz + NAME.nii.gz, test/ images."""
    cases, table = pancreas_cases(n_train + n_val + n_test, shape=shape, seed=seed, prefix="quiz")
    for i, c in enumerate(cases):
        split = "train" if i < n_train else "validation" if i < n_train + n_val else "test"
        sub = os.path.join(root, split) if split == "test" else os.path.join(root, split, table.values[c.case_id]["subtype"])
        write_image(array_to_image(c.channels[0], c.spacing), os.path.join(sub, f"{c.case_id}_0000.nii.gz"))
        if split != "test":
            write_image(array_to_image(c.mask, c.spacing), os.path.join(sub, f"{c.case_id}.nii.gz"))
    return root


DESCRIPTION_FILE = "description.json"


def write_radiograph_layout(root: str, n: int = 16, n_test: int = 4, size=(64, 64), seed: int = 0,
                            lateral: bool = False) -> str:
    """Generic layout: images/*.png, masks/*.png, labels.csv (case_id, finding), test_images/*.png, and
    ``description.json`` naming the mask values (pass it as ``--description``)."""
    from PIL import Image
    cases, table = radiograph_cases(n + n_test, size=size, seed=seed, lateral=lateral)
    for i, c in enumerate(cases):
        img8 = np.clip(c.channels[0] / 1000.0 * 255, 0, 255).astype(np.uint8)
        folder = "images" if i < n else "test_images"
        os.makedirs(os.path.join(root, folder), exist_ok=True)
        Image.fromarray(img8).save(os.path.join(root, folder, f"{c.case_id}.png"))
        if i < n:
            os.makedirs(os.path.join(root, "masks"), exist_ok=True)
            Image.fromarray(c.mask).save(os.path.join(root, "masks", f"{c.case_id}.png"))
    with open(os.path.join(root, "labels.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "finding"])
        for c in cases[:n]:
            w.writerow([c.case_id, table.values[c.case_id]["finding"]])
    names = {str(v): k for k, v in radiograph_labels(lateral).items() if v}
    with open(os.path.join(root, DESCRIPTION_FILE), "w") as f:
        json.dump({"labels": names}, f, indent=2)
    return root
