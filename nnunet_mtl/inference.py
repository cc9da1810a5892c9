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
from typing import Dict, List, Optional, Sequence

import torch

from nnunet_mtl.case_aggregation import DEFAULT_AGGREGATION, DEFAULT_FOREGROUND_FLOOR
from nnunet_mtl.predictor import CSV_NAME, nnUNetPredictorMTL

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
    files = [f for f in os.listdir(folder) if not f.startswith(".")]
    return bool(files) and all(NNUNET_NAME.match(f) for f in files)


def prepare_inputs(inputs: Sequence[str], work_dir: str, clip_percentiles=(0.5, 98.5)) -> Dict[str, str]:
    """Files/folders -> {case_id: path of CASE_0000.nii.gz}; converts non-nnU-Net inputs into work_dir."""
    from nnunet_mtl.conversion.generic_layout import file_stem, read_image
    from nnunet_mtl.conversion.nnunet_raw import write_image
    out = {}
    for path in inputs:
        name = os.path.basename(path.rstrip(os.sep))
        m = NNUNET_NAME.match(name)
        if m and os.path.isfile(path):
            if m.group(2) != "0000":
                continue  # other channels are found by nnU-Net next to _0000
            out[m.group(1)] = path
            continue
        case_id = file_stem(path)
        if case_id is None:
            raise ValueError(f"{path}: not a supported image (NIfTI/NRRD/MHA, PNG/JPG, DICOM file or series folder)")
        target = os.path.join(work_dir, f"{case_id}_0000.nii.gz")
        if not (os.path.isfile(target) and os.path.getmtime(target) >= os.path.getmtime(path)):
            img, _ = read_image(path, clip_percentiles)  # a re-run keeps conversions newer than their source
            write_image(img, target)
        out[case_id] = target
    return out


def list_inputs(input_dir: str) -> List[str]:
    return sorted(os.path.join(input_dir, f) for f in os.listdir(input_dir) if not f.startswith("."))


ENGINES = ("threads", "processes")


def converted_source(input_dir: str, output_dir: str) -> str:
    """Where nnU-Net reads the inputs from: the input folder itself, or its converted copy."""
    if _is_nnunet_input_folder(input_dir):
        return input_dir
    return os.path.join(output_dir, ".converted_inputs")


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
    source = converted_source(input_dir, output_dir)
    if source != input_dir:
        os.makedirs(source, exist_ok=True)
        prepare_inputs(list_inputs(input_dir), source, clip_percentiles)
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
