"""Inference API: load a trained model folder, bring inputs into nnU-Net's format, predict.

Inputs may already be in nnU-Net's layout (``CASE_0000.nii.gz``) or be what users hold:
PNG/JPG/DICOM radiographs, NIfTI volumes with any name, DICOM series folders. Those are
converted with the same readers used for training data (same percentile clipping, same
MONOCHROME1 handling), so test images are treated exactly like training images.
"""
from __future__ import annotations

import os
import re
import time
from typing import TYPE_CHECKING, Dict, List, Optional, Sequence

import torch

from nnunet_mtl.case_aggregation import DEFAULT_AGGREGATION, DEFAULT_FOREGROUND_FLOOR
from nnunet_mtl.predictor import CSV_NAME, nnUNetPredictorMTL

if TYPE_CHECKING:
    from nnunet_mtl.conversion.inference_inputs import ModelInputs, PreparedInputs

NNUNET_NAME = re.compile(r"^(.+)_(\d{4})\.nii\.gz$")


def load_predictor(model_dir: str, folds: Optional[Sequence] = None, checkpoint: str = "checkpoint_final.pth",
                   device: str = "cpu", step_size: float = 0.5, use_mirroring: bool = True,
                   aggregation: str = DEFAULT_AGGREGATION, verbose: bool = False,
                   foreground_floor: float = DEFAULT_FOREGROUND_FLOOR) -> nnUNetPredictorMTL:
    """A predictor for an nnunet_mtl model folder (the folder holding plans.json and fold_X/);
    ``aggregation`` / ``foreground_floor``: how tiles make a case (see case_aggregation)."""
    from nnunet_mtl.planning import add_trainer_path
    if not os.path.isfile(os.path.join(model_dir, "plans.json")):
        raise FileNotFoundError(f"{model_dir}: not a trained model folder (no plans.json)")
    add_trainer_path()  # the checkpoint names our trainer; nnU-Net finds it through nnUNet_extTrainer
    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    predictor = nnUNetPredictorMTL(tile_step_size=step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                   perform_everything_on_device=dev.type == "cuda", device=dev, verbose=verbose,
                                   verbose_preprocessing=False, allow_tqdm=verbose, head_aggregation=aggregation,
                                   foreground_floor=foreground_floor)
    folds = None if folds is None else [f if f == "all" else int(f) for f in folds]
    predictor.initialize_from_trained_model_folder(model_dir, folds, checkpoint)
    return predictor


def _is_nnunet_input_folder(folder: str) -> bool:
    """Only ``CASE_XXXX.nii.gz`` images (side files like notes.txt aside): nnU-Net can read it as it is."""
    from nnunet_mtl.conversion.case_discovery import NOT_IMAGES
    files = [f for f in os.listdir(folder) if not f.startswith(".")]
    images = [f for f in files if os.path.isdir(os.path.join(folder, f)) or not f.lower().endswith(NOT_IMAGES)]
    return bool(images) and all(NNUNET_NAME.match(f) and os.path.isfile(os.path.join(folder, f)) for f in images)


def model_inputs(predictor: nnUNetPredictorMTL) -> "ModelInputs":
    """The channels and image dimensionality a loaded predictor's model takes (``ModelInputs``)."""
    from nnunet_mtl.conversion.inference_inputs import ModelInputs
    return ModelInputs.from_plans(predictor.dataset_json, predictor.configuration_manager.patch_size,
                                  predictor.plans_manager.plans.get("original_median_shape_after_transp"))


def prepare_inputs(inputs: Sequence[str], work_dir: str, clip_percentiles=(0.5, 98.5),
                   model: Optional["ModelInputs"] = None, force: bool = False) -> Dict[str, str]:
    """Files/folders -> {case_id: path of CASE_0000.nii.gz}; converts non-nnU-Net inputs into work_dir.

    ``model`` (``model_inputs(predictor)``) checks channel count and dimensionality and writes colour
    images as R, G, B channel files for colour models; without it every file is one grey channel.
    Conversions are reused while their source is unchanged (``conversions.json`` in work_dir);
    ``force`` reconverts all; conversions of inputs not given are removed. See ``prepare_folder``
    for every channel file and what was done."""
    from nnunet_mtl.conversion.inference_inputs import prepare_cases
    prepared = prepare_cases(inputs, work_dir, model, clip_percentiles, force)
    return {cid: files[0] for cid, files in prepared.cases.items()}


def prepare_folder(input_dir: str, output_dir: str, model: Optional["ModelInputs"] = None,
                   clip_percentiles=(0.5, 98.5), force: bool = False) -> "PreparedInputs":
    """Check a test folder against the model and bring it into nnU-Net's format (``PreparedInputs``:
    the folder nnU-Net reads, per case its files and sources, what was converted, reused, removed).
    An empty folder, duplicate case names, unsupported files, a channel or dimensionality mismatch
    are one-line ``ConversionError``s naming the file."""
    from nnunet_mtl.conversion.inference_inputs import prepare_cases
    return prepare_cases(list_inputs(input_dir), converted_source(input_dir, output_dir), model, clip_percentiles,
                         force, where=input_dir)


def list_inputs(input_dir: str) -> List[str]:
    if not os.path.isdir(input_dir):
        from nnunet_mtl.conversion.masks import ConversionError
        raise ConversionError(f"{input_dir}: input folder not found")
    return sorted(os.path.join(input_dir, f) for f in os.listdir(input_dir) if not f.startswith("."))


ENGINES = ("threads", "processes")
CONVERTED_INPUTS = ".converted_inputs"


def converted_source(input_dir: str, output_dir: str) -> str:
    """Where nnU-Net reads the inputs from: the input folder itself, or its converted copy."""
    if _is_nnunet_input_folder(input_dir):
        return input_dir
    return os.path.join(output_dir, CONVERTED_INPUTS)


def predict_folder(predictor: nnUNetPredictorMTL, input_dir: str, output_dir: str, overwrite: bool = False,
                   save_probabilities: bool = False, num_processes_preprocessing: int = 2,
                   num_processes_export: int = 2, num_parts: int = 1, part_id: int = 0,
                   clip_percentiles=(0.5, 98.5), engine: str = "threads") -> str:
    """Masks (nnU-Net layout) + predictions.csv/json in output_dir; returns the CSV path.

    Cases already predicted are kept and skipped unless ``overwrite`` (nnU-Net's continue mode).
    ``engine='threads'`` runs in-process (threaded_engine); ``'processes'`` uses nnU-Net's
    multiprocessing ``predict_from_files`` (worker start-up costs seconds per process)."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    os.makedirs(output_dir, exist_ok=True)
    source = prepare_folder(input_dir, output_dir, model_inputs(predictor), clip_percentiles, force=overwrite).folder
    if engine == "threads":
        predictor.predict_from_files_threaded(source, output_dir, save_probabilities, overwrite, num_parts, part_id,
                                              export_threads=num_processes_export,
                                              preprocess_threads=num_processes_preprocessing)
    else:
        predictor.predict_from_files(source, output_dir, save_probabilities=save_probabilities, overwrite=overwrite,
                                     num_processes_preprocessing=num_processes_preprocessing,
                                     num_processes_segmentation_export=num_processes_export,
                                     folder_with_segs_from_prev_stage=None, num_parts=num_parts, part_id=part_id)
    return os.path.join(output_dir, CSV_NAME)


def classify_files(predictor: nnUNetPredictorMTL, files: Sequence[str], work_dir: str,
                   clip_percentiles=(0.5, 98.5)) -> List[dict]:
    """One result per file: its head outputs and the seconds it took (model already loaded)."""
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    results = []
    for path in files:
        start = time.perf_counter()
        case_id, nifti = next(iter(prepare_inputs([path], work_dir, clip_percentiles).items()))
        data, _, _ = preprocessor.run_case([nifti], None, predictor.plans_manager, predictor.configuration_manager,
                                           predictor.dataset_json)
        _, heads = predictor.predict_case(torch.from_numpy(data), case_id)
        results.append({"file": path, "case_id": case_id, "outputs": heads.outputs,
                        "seconds": time.perf_counter() - start})
    return results
