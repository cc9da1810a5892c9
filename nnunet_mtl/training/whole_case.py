"""Whole-case validation of the heads after training, inside nnU-Net's own validation pass.

nnU-Net's ``perform_actual_validation`` builds an ``nnUNetPredictor`` (by name, in its trainer
module) and runs its sliding window once per validation case for the masks. While it runs
(and only then: the name is restored afterwards), ``heads_during_validation`` lets that name
build our predictor instead, so the same forwards also give the head outputs: one sliding
window per case for both, and nnU-Net's loop (export, DDP barriers every 20 cases,
``summary.json``) runs unchanged. The loop calls the predictor once per case, in the order of
``dataset_class(folder, keys).identifiers`` (the dataset it iterates). Should a later nnU-Net
build its predictor elsewhere, or run a different number of sliding windows than there are
cases, ``write_validation_heads`` predicts the heads in a second pass, with a warning.

Writes ``validation/predictions.csv|json`` (raw probabilities) and ``validation/mtl_summary.json``
beside nnU-Net's ``summary.json``, then fits the classification targets' temperatures on these
validation cases (``calibration.store.calibrate_fold``) into ``fold_X/calibration.json``, which
the predictor applies. A fit the cases cannot support (too few, one class) keeps T = 1 and says why.
"""
import importlib
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, List
from unittest import mock

import torch
from torch import distributed as dist

from nnunet_mtl import prediction_table
from nnunet_mtl.calibration.store import FILE_NAME as CALIBRATION_FILE, calibrate_fold
from nnunet_mtl.inference.case_aggregation import DEFAULT_AGGREGATION, DEFAULT_FOREGROUND_FLOOR, Aggregation
from nnunet_mtl.io_utils import atomic_write_json
from nnunet_mtl.inference.case_collector import CaseHeads
from nnunet_mtl.inference.predictor import aggregation_for, nnUNetPredictorMTL
from nnunet_mtl.training.head_metrics import whole_case_summary
from nnunet_mtl.training.step_helpers import gather_list

NNUNET_TRAINER_MODULE = "nnunetv2.training.nnUNetTrainer.nnUNetTrainer"  # its validation names nnUNetPredictor
BARRIER_EVERY = 20  # as nnU-Net's validation loop: a barrier every 20 cases against NCCL timeouts


def validation_keys(trainer) -> List[str]:
    """This rank's validation cases, in the order nnU-Net's validation loop visits them."""
    _, val_keys = trainer.do_split()
    if trainer.is_ddp:
        val_keys = val_keys[trainer.local_rank::dist.get_world_size()]
    return list(trainer.dataset_class(trainer.preprocessed_dataset_folder, list(val_keys),
                                      folder_with_segs_from_previous_stage=trainer.folder_with_segs_from_previous_stage)
                .identifiers)


def _predictor_kwargs(trainer) -> dict:
    return dict(head_aggregation=getattr(trainer, "head_aggregation", DEFAULT_AGGREGATION),
                foreground_floor=getattr(trainer, "foreground_floor", DEFAULT_FOREGROUND_FLOOR))


@dataclass
class ValidationHeads:
    """What nnU-Net's validation pass gave: the heads per case, and how many sliding windows ran."""
    keys: List[str]
    results: Dict[str, CaseHeads] = field(default_factory=dict)
    windows: int = 0

    @property
    def complete(self) -> bool:
        return self.windows == len(self.keys) and set(self.results) == set(self.keys)


class _ValidationPredictor(nnUNetPredictorMTL):
    """nnUNetPredictorMTL for nnU-Net's validation loop: each sliding window is the next case."""

    def __init__(self, collected: ValidationHeads, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._collected = collected

    def predict_sliding_window_return_logits(self, input_image: torch.Tensor):
        collected = self._collected
        collected.windows += 1
        if collected.windows > len(collected.keys):  # not the loop we know: masks as usual, heads later
            return super().predict_sliding_window_return_logits(input_image)
        case_id = collected.keys[collected.windows - 1]
        self.collector.begin_case(case_id, self.aggregation)
        try:
            logits = super().predict_sliding_window_return_logits(input_image)
        except BaseException:
            self.collector.abort_case()
            raise
        collected.results[case_id] = self.collector.end_case()
        return logits


@contextmanager
def heads_during_validation(trainer):
    """Yields a ValidationHeads, filled while nnU-Net's perform_actual_validation runs inside."""
    collected = ValidationHeads(validation_keys(trainer))
    extra = _predictor_kwargs(trainer)

    def build(*args, **kwargs):
        return _ValidationPredictor(collected, *args, **kwargs, **extra)

    with mock.patch.object(importlib.import_module(NNUNET_TRAINER_MODULE), "nnUNetPredictor", build):
        yield collected


def write_validation_heads(trainer, collected: ValidationHeads):
    """Rows for every validation case (gathered over DDP ranks) -> validation/predictions.csv|json
    and mtl_summary.json; returns the summary on rank 0 (None elsewhere)."""
    keys, results = collected.keys, collected.results
    if _any_rank(not collected.complete, trainer):
        trainer.print_to_log_file(f"WARNING: nnU-Net's validation pass ran {collected.windows} sliding windows for "
                                  f"{len(keys)} cases and gave head outputs for {len(results)}; predicting the heads "
                                  f"in a second sliding-window pass", also_print_to_console=True)
        results = _predict_separately(trainer, keys)
    rows = [prediction_table.make_row(trainer.spec, k, results[k].outputs) for k in keys]
    rows = gather_list(rows, trainer.is_ddp)
    if trainer.local_rank != 0:
        return None
    folder = os.path.join(trainer.output_folder, "validation")
    os.makedirs(folder, exist_ok=True)
    prediction_table.write(os.path.join(folder, "predictions.csv"), os.path.join(folder, "predictions.json"),
                           trainer.spec, rows)
    summary = whole_case_summary(trainer.spec, rows, trainer.case_table)
    summary["aggregation"] = _aggregation_rule(trainer)
    atomic_write_json(os.path.join(folder, "mtl_summary.json"), summary)
    if trainer.spec.classification_targets:
        fit_calibration(trainer)
    return summary


def fit_calibration(trainer) -> None:
    """Temperatures from validation/predictions.csv -> fold_X/calibration.json, one log line per target."""
    calibration = calibrate_fold(trainer.output_folder, trainer.spec, trainer.case_table)
    for name, fit in calibration.fits.items():
        what = (f"T = {fit.temperature:.3f} (validation NLL {fit.nll_before:.4f} -> {fit.nll_after:.4f}, "
                f"{fit.n_cases} cases)" if fit.fitted else f"T = 1 kept: {fit.reason}")
        trainer.print_to_log_file(f"Calibration of {name!r}: {what}; written to {CALIBRATION_FILE}")


def _predict_separately(trainer, keys: List[str]) -> dict:
    """The fallback: our predictor over this rank's validation cases (heads only; the masks are
    nnU-Net's), with nnU-Net's barriers (every rank runs its whole share, as in nnU-Net's loop)."""
    trainer.set_deep_supervision_enabled(False)
    trainer.network.eval()
    predictor = nnUNetPredictorMTL(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                   perform_everything_on_device=True, device=trainer.device, verbose=False,
                                   verbose_preprocessing=False, allow_tqdm=False, **_predictor_kwargs(trainer))
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, trainer.__class__.__name__,
                                    trainer.inference_allowed_mirroring_axes)
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, list(keys),
                                    folder_with_segs_from_previous_stage=trainer.folder_with_segs_from_previous_stage)
    results = {}
    _, all_keys = trainer.do_split()
    last_barrier_at = len(all_keys) // dist.get_world_size() - 1 if trainer.is_ddp else -1
    try:
        for i, key in enumerate(dataset.identifiers):
            data, _, _, _ = dataset.load_case(key)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                data = torch.from_numpy(data[:])
            results[key] = predictor.predict_case(data, key)[1]
            if trainer.is_ddp and i < last_barrier_at and (i + 1) % BARRIER_EVERY == 0:
                dist.barrier()
    finally:
        trainer.set_deep_supervision_enabled(True)
    return results


def _aggregation_rule(trainer) -> str:
    """The rule in force (a dataset without masks uses the plain mean whatever was asked)."""
    kwargs = _predictor_kwargs(trainer)
    requested = Aggregation(kwargs["head_aggregation"], kwargs["foreground_floor"])
    return aggregation_for(trainer.dataset_json, requested).rule


def _any_rank(flag: bool, trainer) -> bool:
    if not trainer.is_ddp:
        return flag
    t = torch.tensor([int(flag)], device=trainer.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())
