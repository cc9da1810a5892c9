"""The 2D side of the inference benchmark: a model for 256x256 radiographs and N test PNGs (not a test).

The model: synthetic chest radiographs (``nnunet_mtl.synthetic``), planned by nnU-Net's plain planner
for 2D, then shrunk to 6 stages with at most 32 features per stage, trained a few iterations (speed does
not depend on the weights). Training images are stored as PNGs would give them (8-bit grey values, no
spacing, i.e. 1 x 1), so the PNG test images need no resampling, as with users' radiographs. The test
images are written once as PNG files and reused; a marker file records the settings (``common``).
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import List

import numpy as np

from common import BenchDataset, stored_setup

MARKER_2D = "benchmark_setup_2d.json"
SIZE = (256, 256)


def as_png_values(img: np.ndarray) -> np.ndarray:
    """The synthetic image's grey values as an 8-bit PNG stores them (``write_radiograph_layout``)."""
    return np.clip(img / 1000.0 * 255, 0, 255).astype(np.uint8)


def write_pngs(folder: str, n: int, seed: int, size=SIZE) -> List[str]:
    """n synthetic radiographs as 8-bit PNG files ``xr_000.png`` ...; kept when already there."""
    from PIL import Image
    from nnunet_mtl.synthetic import radiograph_cases
    names = [os.path.join(folder, f"xr_{i:03d}.png") for i in range(n)]
    if all(os.path.isfile(p) for p in names):
        return names
    os.makedirs(folder, exist_ok=True)
    cases, _ = radiograph_cases(n, size=size, seed=seed, prefix="xr")
    for c, path in zip(cases, names):
        Image.fromarray(as_png_values(c.channels[0])).save(path)
    return names


def prepare_radiographs(base: str, dataset_id: int, n_train: int, seed: int, num_processes: int = 2,
                        n_stages: int = 6, max_features: int = 32) -> BenchDataset:
    """Write, plan and preprocess the 2D dataset under ``base`` (nnU-Net folders already set), or reuse it."""
    from nnunet_mtl.conversion.nnunet_raw import write_raw_dataset
    from nnunet_mtl.planning import plan_and_preprocess
    from nnunet_mtl.synthetic import radiograph_cases, radiograph_labels
    paths = {k: os.environ[k] for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    shrink = dict(n_stages=n_stages, max_features=max_features, batch_size=2)
    settings = {"dataset_id": dataset_id, "cases": n_train, "size": list(SIZE), "planner": "plain",
                "configuration": "2d", "shrink": shrink, "seed": seed}
    marker = os.path.join(base, MARKER_2D)
    stored = stored_setup(marker, settings)
    if stored is not None:
        print(f"[setup] reusing 2D {stored['name']} in {base}", flush=True)
        return BenchDataset(dataset_id, stored["name"], "2d", stored["plans"], stored["raw_folder"], paths)
    cases, table = radiograph_cases(n_train, size=SIZE, seed=seed)
    cases = [dataclasses.replace(c, channels=[as_png_values(c.channels[0]).astype(np.float32)], spacing=(1.0, 1.0))
             for c in cases]
    raw = write_raw_dataset(paths["nnUNet_raw"], dataset_id, "SynthCXR256", cases, table,
                            radiograph_labels(False), {"0": "rescale_to_0_1"})
    plans = plan_and_preprocess(dataset_id, "plain", ("2d",), num_processes=num_processes, shrink=shrink)
    ds = BenchDataset(dataset_id, os.path.basename(raw), "2d", plans, raw, paths)
    with open(marker, "w") as f:
        json.dump({"settings": settings, "name": ds.name, "plans": plans, "raw_folder": raw}, f, indent=1)
    print(f"[setup] wrote and planned {n_train} synthetic 256x256 radiographs: {raw}", flush=True)
    return ds
