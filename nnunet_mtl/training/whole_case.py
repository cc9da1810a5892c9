"""Whole-case validation of the heads after training: one row per validation case.

Runs our predictor over each preprocessed validation case (sliding window, mirroring,
aggregation over every tile) and writes ``validation/predictions.csv|json`` and
``validation/mtl_summary.json`` beside nnU-Net's own ``summary.json``.
"""
import os
import warnings

import torch
from torch import distributed as dist

from nnunet_mtl import prediction_table
from nnunet_mtl.io_utils import atomic_write_json
from nnunet_mtl.predictor import nnUNetPredictorMTL
from nnunet_mtl.training.head_metrics import whole_case_summary
from nnunet_mtl.training.step_helpers import gather_list


def validate_heads_on_whole_cases(trainer, val_keys):
    """Returns the summary on rank 0 (None elsewhere)."""
    trainer.network.eval()
    predictor = nnUNetPredictorMTL(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                   perform_everything_on_device=True, device=trainer.device, verbose=False,
                                   verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(trainer.network, trainer.plans_manager, trainer.configuration_manager, None,
                                    trainer.dataset_json, trainer.__class__.__name__,
                                    trainer.inference_allowed_mirroring_axes)
    if trainer.is_ddp:
        val_keys = val_keys[trainer.local_rank::dist.get_world_size()]
    dataset = trainer.dataset_class(trainer.preprocessed_dataset_folder, val_keys,
                                    folder_with_segs_from_previous_stage=trainer.folder_with_segs_from_previous_stage)
    rows = []
    for key in dataset.identifiers:
        data, _, _, _ = dataset.load_case(key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = torch.from_numpy(data[:])
        outputs = predictor.predict_case_targets(data)
        rows.append(prediction_table.make_row(trainer.spec, key, outputs))
    rows = gather_list(rows, trainer.is_ddp)
    if trainer.local_rank != 0:
        return None
    folder = os.path.join(trainer.output_folder, "validation")
    os.makedirs(folder, exist_ok=True)
    prediction_table.write(os.path.join(folder, "predictions.csv"), os.path.join(folder, "predictions.json"),
                           trainer.spec, rows)
    summary = whole_case_summary(trainer.spec, rows, trainer.case_table)
    summary["aggregation"] = predictor.effective_aggregation
    atomic_write_json(os.path.join(folder, "mtl_summary.json"), summary)
    return summary
