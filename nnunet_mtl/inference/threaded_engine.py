"""In-process inference engine: no worker processes to spawn.

nnU-Net's ``predict_from_files`` spawns preprocessing and export processes; each re-imports
torch and nnU-Net (seconds per process on a small machine, ~12 s fixed cost per call on 2
cores). Here preprocessing runs in background threads (cases ahead), the sliding window
in the caller's thread, and resampling/export in a thread pool: torch, numpy/scipy and
SimpleITK release the GIL in their heavy loops, so the stages overlap without new processes.
The same nnU-Net functions do the work (preprocessor.run_case, export_prediction_from_logits),
so masks are identical to stock. ``on_case_done(ofile, heads)`` runs in the caller's thread as
soon as a case's mask is written (so a row recorded there always has its mask).
"""
from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, List, Optional, Sequence

import torch
from nnunetv2.inference.export_prediction import export_prediction_from_logits

from nnunet_mtl.inference.predictor import CaseHeads


def run_cases(predictor, input_lists: Sequence[List[str]], output_files: Sequence[str],
              save_probabilities: bool = False, export_threads: int = 2,
              preprocess_threads: int = 2,
              on_case_done: Optional[Callable[[str, CaseHeads], None]] = None) -> List[CaseHeads]:
    """Predict every case (list of channel files) into its truncated output file; returns the
    cases' head outputs, each under its case id (the output file's name). When a case fails (or Ctrl-C),
    the cases already predicted are exported and handed to ``on_case_done`` before the error propagates."""
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    todo = iter(zip(input_lists, output_files))
    pending_pre: deque = deque()     # (ofile, preprocessing future), in case order
    pending_export: deque = deque()  # (ofile, heads, export future), in case order
    heads: List[CaseHeads] = []
    export_threads, preprocess_threads = max(1, export_threads), max(1, preprocess_threads)

    def preprocess(files):
        return preprocessor.run_case(files, None, predictor.plans_manager, predictor.configuration_manager,
                                     predictor.dataset_json)

    handing_over_failed = []  # on_case_done raised: nothing more is handed over after it

    def finish_next() -> None:
        ofile, case_heads, export = pending_export.popleft()
        export.result()
        if on_case_done is not None:
            try:
                on_case_done(ofile, case_heads)
            except BaseException:
                handing_over_failed.append(ofile)
                raise

    with ThreadPoolExecutor(preprocess_threads) as pre_pool, ThreadPoolExecutor(export_threads) as export_pool:
        def queue_next():
            item = next(todo, None)
            if item is not None:
                pending_pre.append((item[1], pre_pool.submit(preprocess, item[0])))

        for _ in range(preprocess_threads + 1):  # keep every preprocessing thread busy, one case ahead
            queue_next()
        try:
            while pending_pre:
                ofile, future = pending_pre.popleft()
                data, _, properties = future.result()
                queue_next()
                logits, case_heads = predictor.predict_case(torch.from_numpy(data), os.path.basename(ofile))
                heads.append(case_heads)
                pending_export.append((ofile, case_heads, export_pool.submit(
                    export_prediction_from_logits, logits.cpu(), properties, predictor.configuration_manager,
                    predictor.plans_manager, predictor.dataset_json, ofile, save_probabilities)))
                while pending_export and (pending_export[0][2].done()  # report finished cases at once, in order
                                          or len(pending_export) > 2 * export_threads):  # bound queued logits
                    finish_next()
        except BaseException:
            for _, future in pending_pre:
                future.cancel()
            while pending_export and not handing_over_failed:  # what was predicted is not lost
                if pending_export[0][2].exception() is None:
                    finish_next()
                else:
                    pending_export.popleft()
            raise
        while pending_export:
            finish_next()
    return heads
