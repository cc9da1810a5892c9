"""The trainer's final validation: nnU-Net's whole-case validation, run by the one engine.

nnU-Net's ``perform_actual_validation`` predicts each validation case with its own predictor and exports the
masks; ours does the same steps with nnU-Net's public functions (the trainer's dataset class and split,
``export_prediction_from_logits``, ``resample_and_save`` for a next stage, ``compute_metrics`` and
``save_summary_json`` -> ``summary.json``, a DDP barrier every 20 cases) around ``nnUNetPredictorMTL.predict_case``,
so one sliding window per case gives the mask and the head outputs. Masks are exported, and the metrics
computed, in threads of this process (the threaded inference engine's way: no worker processes to start,
seconds per validation on a small machine), their files read and written one at a time through the predictor's
plans manager (``inference.serial_io``). A line per case shows the progress.

Then the heads' rows of every validation case (gathered over DDP ranks) go to ``validation/predictions.csv|json``
(raw probabilities) and ``validation/mtl_summary.json``, and the classification targets' temperatures are fitted
on them into ``fold_X/calibration.json`` (a fit the cases cannot support keeps T = 1 and says why).
"""
from __future__ import annotations

import os
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, Optional

import numpy as np
import torch
from nnunetv2.configuration import default_num_processes
from batchgenerators.utilities.file_and_folder_operations import subfiles
from nnunetv2.evaluation.evaluate_predictions import compute_metrics, save_summary_json
from nnunetv2.inference.export_prediction import export_prediction_from_logits, resample_and_save
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.json_export import recursive_fix_for_json_export
from nnunetv2.utilities.label_handling.label_handling import convert_labelmap_to_one_hot
from torch import distributed as dist

from nnunet_mtl import prediction_table
from nnunet_mtl.calibration import conformal_store
from nnunet_mtl.calibration.store import FILE_NAME as CALIBRATION_FILE, calibrate_fold
from nnunet_mtl.evaluation.summary import whole_case_summary
from nnunet_mtl.conversion.file_names import VALIDATED_WEIGHTS
from nnunet_mtl.inference.predictor import CaseHeads, nnUNetPredictorMTL
from nnunet_mtl.io_utils import atomic_write_json
from nnunet_mtl.model.network import unet_weights_hash, unwrap
from nnunet_mtl.training import seg_quality_fit
from nnunet_mtl.training.step_helpers import gather_list

BARRIER_EVERY = 20  # as nnU-Net's validation loop: a barrier every 20 cases against NCCL timeouts


def validate(trainer, save_probabilities: bool = False) -> Optional[dict]:
    """Masks, ``summary.json`` and head rows of the fold's validation cases; returns the heads' summary on rank 0."""
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    predictor = nnUNetPredictorMTL(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                   perform_everything_on_device=True, device=trainer.device, verbose=False,
                                   verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, trainer.__class__.__name__,
                                    trainer.inference_allowed_mirroring_axes)
    folder = os.path.join(trainer.output_folder, "validation")
    os.makedirs(folder, exist_ok=True)
    heads = _predict_cases(trainer, predictor, folder, save_probabilities)
    if trainer.is_ddp:
        dist.barrier()
    if trainer.local_rank == 0:
        _segmentation_metrics(trainer, folder, predictor.plans_manager.image_reader_writer_class())
    trainer.set_deep_supervision_enabled(True)
    compute_gaussian.cache_clear()
    return write_heads(trainer, heads)


def _predict_cases(trainer, predictor: nnUNetPredictorMTL, folder: str, save_probabilities: bool
                   ) -> Dict[str, CaseHeads]:
    _, val_keys = trainer.do_split()
    last_barrier_at = -1
    if trainer.is_ddp:
        last_barrier_at = len(val_keys) // dist.get_world_size() - 1
        val_keys = val_keys[trainer.local_rank::dist.get_world_size()]
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, val_keys,
                                    folder_with_segs_from_previous_stage=trainer.folder_with_segs_from_previous_stage)
    next_stages = trainer.configuration_manager.next_stage_names or []
    for n in next_stages:
        os.makedirs(os.path.join(trainer.output_folder_base, "predicted_next_stage", n), exist_ok=True)
    heads, pending = {}, deque()
    keys = list(dataset.identifiers)
    with ThreadPoolExecutor(max(1, default_num_processes)) as export:
        for i, key in enumerate(keys):
            trainer.print_to_log_file(f"validation {i + 1}/{len(keys)}: predicting {key}", also_print_to_console=True)
            data, properties = _case_data(trainer, dataset, key)
            logits, heads[key] = predictor.predict_case(data, key)
            logits = logits.cpu()
            pending.append(export.submit(export_prediction_from_logits, logits, properties,
                                         trainer.configuration_manager, predictor.plans_manager, trainer.dataset_json,
                                         os.path.join(folder, key), save_probabilities))
            for n in next_stages:
                pending.append(export.submit(_next_stage, trainer, n, key, logits, properties))
            while len(pending) > 2 * max(1, default_num_processes):  # bound the logits waiting in memory
                pending.popleft().result()
            if trainer.is_ddp and i < last_barrier_at and (i + 1) % BARRIER_EVERY == 0:
                dist.barrier()
        while pending:
            pending.popleft().result()
    return heads


def _case_data(trainer, dataset, key: str):
    """(the case's preprocessed data as a tensor, its properties), as nnU-Net's validation loads them."""
    data, _, seg_prev, properties = dataset.load_case(key)
    data = data[:]  # blosc2 -> numpy
    if trainer.is_cascaded:
        data = np.vstack((data, convert_labelmap_to_one_hot(seg_prev[:], trainer.label_manager.foreground_labels,
                                                            output_dtype=data.dtype)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # 'The given NumPy array is not writable'
        return torch.from_numpy(data), properties


def _next_stage(trainer, stage: str, key: str, logits: torch.Tensor, properties: dict) -> None:
    """The softmax for a cascade's next stage, as nnU-Net's validation writes it."""
    manager = trainer.plans_manager.get_configuration(stage)
    folder = os.path.join(nnUNet_preprocessed, trainer.plans_manager.dataset_name, manager.data_identifier)
    dataset_class = infer_dataset_class(folder)
    try:
        shape = dataset_class(folder, [key]).load_case(key)[0].shape[1:]
    except FileNotFoundError:
        trainer.print_to_log_file(f"Predicting next stage {stage} failed for case {key} because the preprocessed "
                                  f"file is missing! Run the preprocessing for this configuration first!")
        return
    resample_and_save(logits, shape, os.path.join(trainer.output_folder_base, "predicted_next_stage", stage, key),
                      trainer.plans_manager, trainer.configuration_manager, properties, trainer.dataset_json,
                      default_num_processes, dataset_class)


def segmentation_summary(gt_folder: str, pred_folder: str, output_file: str, reader_writer, file_ending: str,
                         regions_or_labels, ignore_label, threads: int) -> dict:
    """nnU-Net's ``compute_metrics_on_folder`` with the cases in threads of this process instead of a pool of
    spawned ones (seconds of start-up per validation): nnU-Net's ``compute_metrics`` per case, the mean per label
    or region over the cases, the mean over the foreground ones, written by nnU-Net's ``save_summary_json``."""
    files = subfiles(pred_folder, suffix=file_ending, join=False)
    with ThreadPoolExecutor(max(1, threads)) as pool:
        results = list(pool.map(lambda f: compute_metrics(os.path.join(gt_folder, f), os.path.join(pred_folder, f),
                                                          reader_writer, regions_or_labels, ignore_label), files))
    names = list(results[0]["metrics"][regions_or_labels[0]])
    means = {r: {m: np.nanmean([res["metrics"][r][m] for res in results]) for m in names} for r in regions_or_labels}
    foreground_mean = {m: np.mean([means[k][m] for k in means if k not in (0, "0")]) for m in names}
    for part in (*results, means, foreground_mean):
        recursive_fix_for_json_export(part)
    summary = {"metric_per_case": results, "mean": means, "foreground_mean": foreground_mean}
    save_summary_json(summary, output_file)
    return summary


def _segmentation_metrics(trainer, folder: str, reader_writer) -> None:
    """nnU-Net's ``summary.json`` and its log lines (``reader_writer``: the predictor's, reading under the image
    I/O lock, ``serial_io``)."""
    lm = trainer.label_manager
    metrics = segmentation_summary(os.path.join(trainer.preprocessed_dataset_folder_base, "gt_segmentations"), folder,
                                   os.path.join(folder, "summary.json"), reader_writer,
                                   trainer.dataset_json["file_ending"],
                                   lm.foreground_regions if lm.has_regions else lm.foreground_labels, lm.ignore_label,
                                   default_num_processes)
    for label in metrics["mean"]:
        trainer.logger.log_summary(f"final_val/class_{label}_dice", metrics["mean"][label]["Dice"])
    trainer.logger.log_summary("final_val/foreground_dice", metrics["foreground_mean"]["Dice"])
    trainer.print_to_log_file("Validation complete", also_print_to_console=True)
    trainer.print_to_log_file("Mean Validation Dice: ", metrics["foreground_mean"]["Dice"], also_print_to_console=True)


def write_heads(trainer, heads: Dict[str, CaseHeads]) -> Optional[dict]:
    """Rows for every validation case (gathered over DDP ranks) -> validation/predictions.csv|json and
    mtl_summary.json, then the temperatures; returns the summary on rank 0 (None elsewhere)."""
    rows = [prediction_table.make_row(trainer.spec, k, h.outputs) for k, h in heads.items()]
    rows = gather_list(rows, trainer.is_ddp)
    if trainer.local_rank != 0:
        return None
    folder = os.path.join(trainer.output_folder, "validation")
    prediction_table.write(os.path.join(folder, "predictions.csv"), os.path.join(folder, "predictions.json"),
                           trainer.spec, rows)
    summary = whole_case_summary(trainer.spec, rows, trainer.case_table)
    summary["heads"] = "trained"
    summary["seg_quality"] = seg_quality_fit.fit_fold(trainer.output_folder, rows, os.path.join(folder, "summary.json"),
                                                      trainer.dataset_json["file_ending"])  # its flag's threshold
    atomic_write_json(os.path.join(folder, "mtl_summary.json"), summary)
    atomic_write_json(os.path.join(folder, VALIDATED_WEIGHTS),  # a later run knows whether this is still current
                      {"unet_sha256": unet_weights_hash(unwrap(trainer.network).state_dict())})
    if trainer.spec.classification_targets:
        calibration = calibrate_fold(trainer.output_folder, trainer.spec, trainer.case_table)
        for name, fit in calibration.fits.items():
            what = (f"T = {fit.temperature:.3f} (validation NLL {fit.nll_before:.4f} -> {fit.nll_after:.4f}, "
                    f"{fit.n_cases} cases)" if fit.fitted else f"T = 1 kept: {fit.reason}")
            trainer.print_to_log_file(f"Calibration of {name!r}: {what}; written to {CALIBRATION_FILE}")
    conformal = conformal_store.conformal_fold(trainer.output_folder, trainer.spec, trainer.case_table)
    summary["conformal"] = conformal_store.describe(conformal)
    for line in summary["conformal"]:
        trainer.print_to_log_file(f"Conformal calibration of {line}; written to {conformal_store.FILE_NAME}")
    atomic_write_json(os.path.join(folder, "mtl_summary.json"), summary)
    return summary
