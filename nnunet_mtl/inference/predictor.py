"""nnUNetPredictorMTL: the one inference engine. nnU-Net's predictor whose sliding window also reads the heads.

What a predictor offers (every CLI, the pipeline, the notebook, the trainer's final validation, fitting heads
and Grad-CAM call these, nothing else):

* ``predict_case(data, case_id) -> (logits, CaseHeads)``: one preprocessed case ``(c, *spatial)``, masks and
  head outputs from one pass. The folds run through nnU-Net's own ``predict_logits_from_preprocessed_data``
  (fold loop, device handling, out-of-memory retry); each fold's sliding window is ``tiling.sliding_window``
  (nnU-Net's arithmetic, so the masks are stock's), whose unmirrored forwards also give the case's pooled
  features; the fold's heads read them (``MTLNetwork.read``) and the folds' outputs are averaged.
* ``predict_heads(data, case_id) -> CaseHeads``: the head outputs alone, from the same unmirrored forwards
  (one per tile, no logits stitched; without a head that reads the segmentation, no decoder): equal to
  ``predict_case``'s (tested), at a fraction of its cost. ``nnunet_mtl_classify`` uses it.
* ``case_pools(data, request) -> [pool sums per fold]``: the same pass for any stages and pools (fitting heads).
* ``calibrated_outputs`` / ``outputs_calibrated``: the folds' temperatures (``calibration``), applied to rows.
* ``review_columns``: the folds' pooled conformal scores (``conformal``) at ``coverage``: one case's prediction
  sets, intervals and review flag (empty columns without ``conformal.json``).
* ``predict_from_data_iterator``: nnU-Net's multiprocessing loop, with each case's row handed over once its
  mask is written (``on_case_done``).

``network`` is the torch ``MTLNetwork`` or, on the OpenVINO backend, an ``OpenVINONetwork`` around it; both
offer ``pooled(x, request, with_seg)``, the engine's one network call (``inference.openvino_backend``).
The private nnU-Net methods used (``_internal_get_sliding_window_slicers``,
``_internal_predict_sliding_window_return_logits``, ``_internal_get_data_iterator_from_lists_of_filenames``)
are used here and nowhere else.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from nnunetv2.configuration import default_num_processes
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.utilities.helpers import dummy_context, empty_cache
from torch._dynamo import OptimizedModule

from nnunet_mtl.calibration.conformal import check_coverage
from nnunet_mtl.calibration.conformal_store import DEFAULT_COVERAGE, EnsembleConformal
from nnunet_mtl.calibration.store import EnsembleCalibration
from nnunet_mtl.dataset_spec import targets_from_plans
from nnunet_mtl.inference import serial_io, tiling
from nnunet_mtl.inference.checks import EngineChecks
from nnunet_mtl.inference.openvino_backend import OpenVINONetwork
from nnunet_mtl.inference.record import merge_into_folder
from nnunet_mtl.model.network import unwrap
from nnunet_mtl.model.pooling import PoolRequest, Sums
from nnunet_mtl.targets import TargetSpec

CaseDone = Callable[[str, "CaseHeads"], None]


@dataclass
class CaseHeads:
    """One case's head outputs: ``outputs`` (target -> probabilities or value, folds averaged, raw) and each
    fold's own (``folds``)."""
    case_id: Optional[str]
    outputs: Dict[str, np.ndarray]
    folds: List[Dict[str, np.ndarray]] = field(default_factory=list)


def average_folds(per_fold: Sequence[Dict[str, np.ndarray]], case_id: Optional[str]) -> CaseHeads:
    """Fold ensemble: the plain mean of each fold's outputs (probabilities, or values), as nnU-Net averages
    its folds' logits."""
    if not per_fold:
        raise RuntimeError(f"case {case_id!r}: no fold was predicted")
    outputs = {n: np.mean([f[n] for f in per_fold], axis=0) for n in per_fold[0]}
    return CaseHeads(case_id, outputs, list(per_fold))


class nnUNetPredictorMTL(nnUNetPredictor):
    def __init__(self, *args, tile_batch: int = tiling.DEFAULT_TILE_BATCH, **kwargs):
        super().__init__(*args, **kwargs)
        if int(tile_batch) < 1:
            raise ValueError(f"tile_batch must be >= 1, got {tile_batch}")
        self.tile_batch = int(tile_batch)  # network inputs (tiles x mirrors) per forward; 1: nnU-Net's own order
        self.calibration: Optional[EnsembleCalibration] = None  # the folds' temperatures, set on loading
        self.conformal: Optional[EnsembleConformal] = None  # the folds' conformal scores, set on loading
        self.coverage = DEFAULT_COVERAGE  # of the prediction sets and intervals (set_review)
        self.interval_tolerance: Dict[str, float] = {}  # regression target -> widest interval not flagged
        self.checkpoint_files: List[str] = []  # what the predictions come from (provenance)
        self.backend = "torch"
        self._fold_outputs: Optional[List[Dict[str, np.ndarray]]] = None  # the open case's per-fold outputs
        self.checks = EngineChecks()  # seg_quality and ood_score's parts (inference.checks), set on loading

    def initialize_from_trained_model_folder(self, model_training_output_dir: str, use_folds,
                                             checkpoint_name: str = 'checkpoint_final.pth'):
        """nnU-Net's loading, then the loaded folds' calibration and conformal files (None when no fold has one)."""
        if use_folds is None:
            use_folds = nnUNetPredictor.auto_detect_available_folds(model_training_output_dir, checkpoint_name)
        super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        fold_dirs = [os.path.join(model_training_output_dir, f"fold_{f}") for f in use_folds]
        self.calibration = EnsembleCalibration.from_fold_dirs(fold_dirs)
        self.conformal = EnsembleConformal.from_fold_dirs(fold_dirs, self.spec)
        self.checks = EngineChecks.from_fold_dirs(fold_dirs)
        self.checkpoint_files = [os.path.join(d, checkpoint_name) for d in fold_dirs]

    @property
    def plans_manager(self):
        return self._plans_manager

    @plans_manager.setter
    def plans_manager(self, value) -> None:
        """Whoever sets it (nnU-Net's loaders, the trainer's validation), images are read and written one at a
        time in this process (``serial_io``: SimpleITK crashes on concurrent reads)."""
        self._plans_manager = serial_io.serialized(value)

    @property
    def spec(self) -> TargetSpec:
        return targets_from_plans(self.plans_manager.plans)

    def close(self) -> None:
        """Release the backend's native objects (OpenVINO's compiled models and runtime) now, not at exit."""
        if isinstance(self.network, OpenVINONetwork):
            self.network.close()

    @property
    def mtl_network(self):
        """The torch MTLNetwork (inside DDP / compile / OpenVINO wrappers): its heads read the pool sums."""
        return unwrap(self.network)

    # ------------------------------------------------------------------ one case
    def predict_case(self, data: torch.Tensor, case_id: Optional[str] = None) -> Tuple[torch.Tensor, CaseHeads]:
        """Segmentation logits and head outputs of one preprocessed case ``(c, *spatial)``: with the loaded folds,
        or, after ``manual_initialization`` without parameters, the network's current weights."""
        with self._collecting_folds() as per_fold:
            if self.list_of_parameters:
                logits = self.predict_logits_from_preprocessed_data(data)
            else:
                logits = self.predict_sliding_window_return_logits(data)
        heads = average_folds(per_fold, case_id)
        heads.outputs.update(self.checks.of_logits(logits, self.label_manager.has_regions))  # seg_quality
        return logits, heads

    def predict_heads(self, data: torch.Tensor, case_id: Optional[str] = None) -> CaseHeads:
        """Head outputs of one preprocessed case, equal to ``predict_case(...)[1]``: the same unmirrored forward of
        every tile, without stitching logits (and without the decoder where no head reads the segmentation); with
        each fold's feature check (``ood_score``'s part), as the mask pass."""
        return average_folds([{**self.read_pools(sums), **self.checks.of_fold_sums(fold, sums)}
                              for fold, sums in enumerate(self._fold_pools(data, None))], case_id)

    def case_pools(self, data: torch.Tensor, request: Optional[PoolRequest] = None) -> List[Sums]:
        """Per fold (the loaded ones, or the network's weights), one case's pool sums (``request``, default what
        the heads read) from each tile's unmirrored forward."""
        return list(self._fold_pools(data, request))

    def _fold_pools(self, data: torch.Tensor, request: Optional[PoolRequest]) -> Iterator[Sums]:
        """The case's pool sums fold by fold; each fold's weights stay loaded until the next is asked for."""
        padded, slicers, _ = self.padded_tiles(data)
        n_threads = torch.get_num_threads()  # as nnU-Net's predict_logits_from_preprocessed_data does
        torch.set_num_threads(min(default_num_processes, n_threads))
        try:
            for params in self.list_of_parameters or [None]:
                if params is not None:  # as nnU-Net's fold loop loads a fold
                    (self.network._orig_mod if isinstance(self.network, OptimizedModule) else
                     self.network).load_state_dict(params)
                self.network = self.network.to(self.device)
                self.network.eval()
                with torch.inference_mode(), self._autocast():
                    sums = tiling.pooled_window(lambda x, w: (None, self.network_pooled(x, request, False, w)[1]),
                                                padded, slicers, self.configuration_manager.patch_size,
                                                self.use_gaussian, self.device, self.tile_batch)
                yield sums
        finally:
            torch.set_num_threads(n_threads)

    @torch.inference_mode()
    def read_pools(self, sums: Sums) -> Dict[str, np.ndarray]:
        """The loaded fold's heads on one case's pool sums: target -> probabilities or value (numpy)."""
        return {k: v[0].float().cpu().numpy() for k, v in self.mtl_network.read(sums).items()}

    def network_pooled(self, x: torch.Tensor, request: Optional[PoolRequest], with_seg: bool,
                       weights: torch.Tensor):
        """The engine's one network call: the backend's ``pooled`` (OpenVINO's compiled graph, or the torch
        MTLNetwork inside any DDP / compile wrapper); ``weights``: each tile's share of its voxels (``tiling``)."""
        runner = self.network if isinstance(self.network, OpenVINONetwork) else self.mtl_network
        return runner.pooled(x, request, with_seg, weights)

    def _autocast(self):
        return torch.autocast(self.device.type) if self.device.type == "cuda" else dummy_context()

    def padded_tiles(self, data: torch.Tensor):
        """(the case padded to the patch size, its tiles, the slicer that removes the padding), as nnU-Net's
        sliding window makes them."""
        padded, revert = pad_nd_image(data, self.configuration_manager.patch_size, 'constant', {'value': 0}, True, None)
        return padded, self._internal_get_sliding_window_slicers(padded.shape[1:]), revert  # nnU-Net's private tiling

    @contextmanager
    def _collecting_folds(self):
        """Per-fold head outputs of the sliding windows run inside the block (one case)."""
        if self._fold_outputs is not None:
            raise RuntimeError("a case is already being predicted by this predictor")
        self._fold_outputs = []
        try:
            yield self._fold_outputs
        finally:
            self._fold_outputs = None

    # ------------------------------------------------------------------ nnU-Net's hook: one fold's sliding window
    @torch.inference_mode()
    def _internal_predict_sliding_window_return_logits(self, data, slicers, do_on_device: bool = True):
        """nnU-Net's sliding window (``tiling``: its arithmetic, its order), whose unmirrored forwards also give the
        fold's head outputs for the case being predicted."""
        empty_cache(self.device)
        results_device = self.device if do_on_device else torch.device("cpu")
        logits, sums = tiling.sliding_window(
            lambda x, w: self.network_pooled(x, None, True, w), data, slicers, self.configuration_manager.patch_size,
            self.label_manager.num_segmentation_heads, self.allowed_mirroring_axes if self.use_mirroring else None,
            self.use_gaussian, self.device, results_device, self.tile_batch)
        if self._fold_outputs is not None and sums:
            self._fold_outputs.append(self.read_pools(sums))
            self._fold_outputs[-1].update(self.checks.of_fold_sums(len(self._fold_outputs) - 1, sums))  # ood
        return logits

    # ------------------------------------------------------------------ many cases: nnU-Net's process pool
    def predict_files(self, input_lists, output_files, save_probabilities: bool, n_preprocessing: int,
                      n_export: int, on_case_done: CaseDone) -> None:
        """nnU-Net's multiprocessing path (preprocessing and export in worker processes) on exactly these cases."""
        iterator = self._internal_get_data_iterator_from_lists_of_filenames(  # nnU-Net's private data iterator
            input_lists, None, output_files, n_preprocessing)
        self.predict_from_data_iterator(iterator, save_probabilities, n_export, on_case_done)

    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = default_num_processes,
                                   on_case_done: Optional[CaseDone] = None):
        """nnU-Net's loop; each item is one case (named after its output file). nnU-Net exports in worker
        processes and waits only at the end, so between items the rows of earlier cases whose mask is written are
        handed to ``on_case_done(ofile, heads)`` (default: merged into the output folder's predictions table),
        the rest when the loop is done: a killed run keeps the rows of its finished cases, and no row is handed
        over before its mask exists."""
        on_case_done = on_case_done or self._merge_row
        waiting = []  # (ofile, heads, stat of a mask there before) of cases whose rows are not handed over yet

        def announced():
            for n, item in enumerate(data_iterator):
                self._hand_over(waiting, on_case_done, exported_only=True)
                ofile = item['ofile']
                before = self._mask_stat(ofile) if ofile is not None else None
                with self._collecting_folds() as per_fold:
                    yield item  # nnU-Net predicts this case before it asks for the next one
                name = os.path.basename(ofile) if ofile is not None else f"case_{n:04d}"
                if ofile is not None:  # in-memory results (no file) have no row
                    waiting.append((ofile, average_folds(per_fold, name), before))

        try:
            ret = super().predict_from_data_iterator(announced(), save_probabilities,
                                                     num_processes_segmentation_export)
        finally:
            if isinstance(data_iterator, MultiThreadedAugmenter):
                data_iterator._finish()
        self._hand_over(waiting, on_case_done, exported_only=False)  # nnU-Net has waited for every export
        return ret

    def _hand_over(self, waiting: list, on_case_done: CaseDone, exported_only: bool) -> None:
        ready = [w for w in waiting if not exported_only or self._exported(w[0], w[2])]
        for w in ready:
            waiting.remove(w)
            on_case_done(w[0], w[1])

    def _merge_row(self, ofile: str, heads: CaseHeads) -> None:
        outputs = self.calibrated_outputs(heads.outputs)
        merge_into_folder(os.path.dirname(ofile), self.spec, {heads.case_id: outputs}, self.outputs_calibrated,
                          {heads.case_id: self.review_columns(outputs)})

    def _mask_stat(self, ofile: str) -> Optional[tuple]:
        """Identity of the mask file at ``ofile`` now (None when there is none)."""
        try:
            st = os.stat(ofile + self.dataset_json['file_ending'])
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _exported(self, ofile: str, before: Optional[tuple] = None) -> bool:
        """nnU-Net's export writes the mask last and not atomically: done when it exists, is not the
        file that was there before the case was predicted (``before``: a stale mask of an older run),
        and reads whole."""
        path = ofile + self.dataset_json['file_ending']
        stat = self._mask_stat(ofile)
        if stat is None or stat == before:
            return False
        try:
            self.plans_manager.image_reader_writer_class().read_seg(path)
        except Exception:  # noqa: BLE001 - still being written
            return False
        return True

    # ------------------------------------------------------------------ calibration
    @property
    def outputs_calibrated(self) -> bool:
        """Whether rows made now carry calibrated probabilities: a fitted temperature for every classification
        target (the ``probabilities_calibrated`` flag)."""
        targets = self.spec.classification_targets
        return self.calibration is not None and bool(targets) and self.calibration.covers(t.name for t in targets)

    def calibrated_outputs(self, outputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """One case's outputs with the classification probabilities calibrated (unchanged without calibration)."""
        return outputs if self.calibration is None else self.calibration.apply_outputs(self.spec, outputs)

    # ------------------------------------------------------------------ conformal sets
    def set_review(self, coverage: float = DEFAULT_COVERAGE, interval_tolerance: Optional[Dict[str, float]] = None,
                   calibrated: bool = True) -> None:
        """The coverage of the sets and intervals, and per regression target the widest interval not flagged for
        review. ``calibrated=False`` (raw probabilities asked for) drops the sets: their scores are of calibrated
        probabilities."""
        self.coverage = check_coverage(coverage)
        names = {t.name for t in self.spec.regression_targets}
        unknown = sorted(set(interval_tolerance or {}) - names)
        if unknown:
            raise ValueError(f"--interval_tolerance: {', '.join(unknown)} is not a regression target of this model "
                             f"({', '.join(sorted(names)) or 'none'})")
        self.interval_tolerance = dict(interval_tolerance or {})
        if not calibrated:
            self.conformal = None

    def review_columns(self, calibrated_outputs: Dict[str, np.ndarray]) -> Dict[str, str]:
        """One case's conformal columns (``prediction_table.review_columns``) from its calibrated outputs; empty
        without conformal files."""
        if self.conformal is None:
            return {}
        return self.conformal.review(self.spec, calibrated_outputs, self.coverage, self.interval_tolerance)
