"""One loader for any model folder: a model this project trained, or one ``nnunet_mtl_add_heads`` made from a
stock nnU-Net model. Both are nnU-Net results folders (``plans.json`` with the targets, ``dataset.json``,
``fold_k/checkpoint_final.pth`` whose network weights hold the heads), loaded by nnU-Net's own
``initialize_from_trained_model_folder`` into the one engine (``predictor.nnUNetPredictorMTL``)."""
from __future__ import annotations

import os
from typing import Optional, Sequence

import torch

from nnunet_mtl.conversion.inference_inputs import ModelInputs
from nnunet_mtl.dataset_spec import PLANS_KEY
from nnunet_mtl.inference import openvino_backend, tiling
from nnunet_mtl.inference.predictor import nnUNetPredictorMTL
from nnunet_mtl.io_utils import read_json
from nnunet_mtl.planning import add_trainer_path


class ModelFolderError(ValueError):
    """A folder that cannot be predicted with; the message names it and says what to do."""


def check_model_folder(folder: str, checkpoint: str = "checkpoint_final.pth",
                       folds: Optional[Sequence] = None) -> None:
    """One line for a folder ``-m`` cannot use: missing, not an nnU-Net model, a stock model whose heads are still
    to be fitted, or without the checkpoint asked for."""
    if not os.path.isdir(folder):
        raise ModelFolderError(f"{folder}: model folder not found")
    for name in ("plans.json", "dataset.json"):
        if not os.path.isfile(os.path.join(folder, name)):
            raise ModelFolderError(f"{folder}: not an nnU-Net model folder (no {name})")
    if PLANS_KEY not in read_json(os.path.join(folder, "plans.json")):
        raise ModelFolderError(f"{folder}: a stock nnU-Net model (no image-level heads); fit heads on it first "
                               f"(nnunet_mtl_add_heads -m {folder} -o MODEL_DIR) and predict with -m MODEL_DIR")
    wanted = [str(f) for f in folds] if folds is not None else None
    found = [d[5:] for d in sorted(os.listdir(folder)) if d.startswith("fold_")
             and os.path.isfile(os.path.join(folder, d, checkpoint))]
    missing = [f for f in (wanted or []) if f not in found]
    if missing:
        raise ModelFolderError(f"{os.path.join(folder, f'fold_{missing[0]}', checkpoint)}: checkpoint not found")
    if not found:
        raise ModelFolderError(f"{folder}: no fold_*/{checkpoint} (train the model first)")


def load_predictor(model_dir: str, folds: Optional[Sequence] = None, checkpoint: str = "checkpoint_final.pth",
                   device: str = "cpu", step_size: float = 0.5, use_mirroring: bool = True, verbose: bool = False,
                   tile_batch: Optional[int] = None, backend: str = "auto",
                   prepare: Optional[str] = "masks") -> nnUNetPredictorMTL:
    """The engine for a model folder (``check_model_folder`` first: one line for a folder it cannot use).

    ``folds``: the folds to ensemble (default: every fold with ``checkpoint``); ``tile_batch``: network inputs
    (tiles x mirrors) per forward (``tiling``; None: nnU-Net's own one at a time); ``backend``: what runs the
    network ('auto' = OpenVINO on the CPU when installed and working, else torch; ``openvino_backend.attach``);
    ``prepare``: the pass to compile now on OpenVINO ('masks', 'heads', or None: on first use)."""
    if prepare not in ("masks", "heads", None):
        raise ValueError(f"prepare must be 'masks', 'heads' or None, not {prepare!r}")
    check_model_folder(model_dir, checkpoint, folds)
    add_trainer_path()  # the checkpoint names our trainer; nnU-Net finds it through nnUNet_extTrainer
    dev = torch.device(device)
    openvino_backend.resolve_backend(backend, dev)  # a wrong name fails before loading
    predictor = nnUNetPredictorMTL(tile_step_size=step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                   perform_everything_on_device=dev.type == "cuda", device=dev, verbose=verbose,
                                   verbose_preprocessing=False, allow_tqdm=verbose,
                                   tile_batch=tiling.DEFAULT_TILE_BATCH if tile_batch is None else tile_batch)
    if folds is None:
        folds = nnUNetPredictorMTL.auto_detect_available_folds(model_dir, checkpoint)
    folds = [f if f == "all" else int(f) for f in folds]
    predictor.initialize_from_trained_model_folder(model_dir, folds, checkpoint)
    predictor.network, predictor.backend = openvino_backend.attach(
        predictor.network, len(predictor.dataset_json["channel_names"]), predictor.configuration_manager.patch_size,
        backend, dev, predictor.list_of_parameters, None if prepare is None else prepare == "masks")
    return predictor


def model_inputs(predictor: nnUNetPredictorMTL):
    """The channels and image dimensionality a loaded predictor's model takes (``ModelInputs``)."""
    return ModelInputs.from_plans(predictor.dataset_json, predictor.configuration_manager.patch_size,
                                  predictor.plans_manager.plans.get("original_median_shape_after_transp"))
