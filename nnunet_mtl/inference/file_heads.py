"""The per-file work of ``classify_files``: each image converted in a folder of its own, preprocessed, and its
head outputs and input checks read by the heads-only pass; run here by the threads engine and on each Ray actor
(``ray_engine.FilesActor``)."""
from __future__ import annotations

import contextlib
import os
import time
from typing import Iterator, Sequence

import torch

from nnunet_mtl.conversion.inference_inputs import prepare_cases
from nnunet_mtl.inference.loader import model_inputs
from nnunet_mtl.inference.predictor import nnUNetPredictorMTL


def heads_of_files(predictor: nnUNetPredictorMTL, files: Sequence[str], work_dir: str,
                   clip_percentiles=(0.5, 98.5), chatter=None) -> Iterator[dict]:
    """``classify_files``' work in this process, the raw head outputs of each file. Each file is converted in its
    own folder, so two files with the same name in different folders stay apart; inputs are checked against the
    model's channels and dimensionality. ``chatter``: where nnU-Net's prints go (e.g. sys.stderr). Only head
    outputs are needed, so the predictor's ``predict_heads`` runs: one unmirrored forward per tile, the very
    numbers ``predict_folder`` writes for the same image."""
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    model = model_inputs(predictor)
    quiet = (lambda: contextlib.redirect_stdout(chatter)) if chatter is not None else contextlib.nullcontext
    for i, path in enumerate(files):
        start = time.perf_counter()
        try:
            with quiet():
                prepared = prepare_cases([path], os.path.join(work_dir, f"{i:05d}"), model, clip_percentiles)
                case_id, channel_files = next(iter(prepared.cases.items()))
                data, _, _ = preprocessor.run_case(channel_files, None, predictor.plans_manager,
                                                   predictor.configuration_manager, predictor.dataset_json)
                data = torch.from_numpy(data)
                heads = predictor.predict_heads(data, case_id)
                checks = predictor.checks.of_files(channel_files, predictor.plans_manager.image_reader_writer_class)
        except Exception as e:  # noqa: BLE001 - one file's failure is its own line; the others go on
            yield {"file": path, "error": _one_line(e)}
            continue
        yield {"file": path, "case_id": case_id, "outputs": {**heads.outputs, **checks},
               "seconds": time.perf_counter() - start}


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__
