"""nnU-Net folders, planning and preprocessing through nnU-Net's own API.

``use_base_dir`` places nnUNet_raw/_preprocessed/_results under one folder and points
``nnUNet_extTrainer`` at our trainers (nnU-Net reads these variables lazily, at use).
``shrink_plans`` makes a tiny copy of a configuration (few features, small batch/patch) for
tests and the CPU demo; it keeps the data identifier, so preprocessing is shared.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Dict, Optional, Sequence

from nnunet_mtl import trainer_dir
from nnunet_mtl.io_utils import atomic_write_json, read_json

PLANNERS = {
    "resenc_m": ("nnUNetPlannerResEncM", "nnUNetResEncUNetMPlans"),
    "resenc_l": ("nnUNetPlannerResEncL", "nnUNetResEncUNetLPlans"),
    "plain": ("ExperimentPlanner", "nnUNetPlans"),
}


def use_base_dir(base_dir: str, raw: Optional[str] = None, preprocessed: Optional[str] = None,
                 results: Optional[str] = None) -> Dict[str, str]:
    """Set the nnU-Net folder variables (and nnUNet_extTrainer) for this process and its children."""
    paths = {
        "nnUNet_raw": os.path.abspath(raw or os.path.join(base_dir, "nnUNet_raw")),
        "nnUNet_preprocessed": os.path.abspath(preprocessed or os.path.join(base_dir, "nnUNet_preprocessed")),
        "nnUNet_results": os.path.abspath(results or os.path.join(base_dir, "nnUNet_results")),
    }
    for k, v in paths.items():
        os.makedirs(v, exist_ok=True)
        os.environ[k] = v
    add_trainer_path()
    return paths


def add_trainer_path() -> None:
    """Prepend our trainer folder to nnUNet_extTrainer (keeping any folders the user listed)."""
    current = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if trainer_dir() not in current:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join([trainer_dir()] + current)


def plans_identifier(planner: str) -> str:
    return _planner(planner)[1]


def _planner(planner: str):
    if planner not in PLANNERS:
        raise ValueError(f"unknown planner {planner!r}; choose one of {sorted(PLANNERS)}")
    return PLANNERS[planner]


def plan_and_preprocess(dataset_id: int, planner: str = "resenc_m", configurations: Sequence[str] = ("3d_fullres",),
                        num_processes: int = 2, verify_integrity: bool = True,
                        shrink: Optional[dict] = None) -> str:
    """Fingerprint, plan and preprocess with nnU-Net; returns the plans identifier used.

    With ``shrink`` (kwargs of shrink_plans) the plans are made tiny *before* preprocessing."""
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)
    planner_class, plans_name = _planner(planner)
    extract_fingerprints([dataset_id], num_processes=num_processes, check_dataset_integrity=verify_integrity,
                         show_progress_bar=False)
    with _positive_da_workers():  # the planner calls torch.set_num_threads(nnUNet_n_proc_DA), which rejects 0
        plan_experiments([dataset_id], planner_class)
    if shrink:
        for c in configurations:
            shrink_plans(plans_file(dataset_id, plans_name), c, **shrink)
    preprocess([dataset_id], plans_name, configurations=tuple(configurations),
               num_processes=[num_processes] * len(configurations), show_progress_bar=False)
    return plans_name


@contextmanager
def _positive_da_workers():
    old = os.environ.get("nnUNet_n_proc_DA")
    if old is not None and old.strip() == "0":
        os.environ["nnUNet_n_proc_DA"] = "1"
    try:
        yield
    finally:
        if old is not None:
            os.environ["nnUNet_n_proc_DA"] = old


def plans_file(dataset_id: int, plans_name: str) -> str:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    return os.path.join(nnUNet_preprocessed, maybe_convert_to_dataset_name(dataset_id), plans_name + ".json")


def shrink_plans(path: str, configuration: str, max_features: Optional[int] = None, batch_size: Optional[int] = None,
                 patch_size: Optional[Sequence[int]] = None, n_stages: Optional[int] = None) -> None:
    """Make one configuration smaller in place: fewer stages, capped features, batch/patch size."""
    plans = read_json(path)
    conf = plans["configurations"][configuration]
    arch = conf["architecture"]["arch_kwargs"]
    if n_stages is not None and n_stages < arch["n_stages"]:
        for key in ("features_per_stage", "kernel_sizes", "strides", "n_blocks_per_stage", "n_conv_per_stage"):
            if key in arch and isinstance(arch[key], list):
                arch[key] = arch[key][:n_stages]
        if "n_conv_per_stage_decoder" in arch:
            arch["n_conv_per_stage_decoder"] = arch["n_conv_per_stage_decoder"][:n_stages - 1]
        arch["n_stages"] = n_stages
    if max_features is not None:
        arch["features_per_stage"] = [min(int(f), int(max_features)) for f in arch["features_per_stage"]]
    if batch_size is not None:
        conf["batch_size"] = int(batch_size)
    if patch_size is not None:
        conf["patch_size"] = [int(p) for p in patch_size]
    atomic_write_json(path, plans)
