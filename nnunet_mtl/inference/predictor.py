"""nnUNetPredictorMTL: nnU-Net's predictor that also returns whole-case head outputs.

One pass of nnU-Net's sliding window gives both: the segmentation exactly as stock nnU-Net
computes it (its own tile loop, mirror loop and Gaussian run unchanged), and, for every tile
and every mirror, the head outputs of the same forward. A ``CaseCollector`` gathers them per
tile and fold; ``case_aggregation`` combines the tiles (``head_aggregation``), then the folds
are averaged. Entry points that know the case: ``predict_case`` (one preprocessed case; the
in-process engine ``threaded_engine.run_cases`` calls it) and nnU-Net's own
``predict_from_files`` / ``predict_from_data_iterator``. Outside a case the predictor is
nnU-Net's, unchanged.

``tile_batch`` > 1 sends that many network inputs (tiles x mirrors) through each forward
(``batched_window``: nnU-Net's accumulation, in its order; results equal to about 1e-6).
``predict_heads`` (classify) gives the head outputs alone: from the encoder only, without the
decoder, where that equals the full pass (no head reads the segmentation, and one tile or a rule
that weights tiles equally); otherwise it is ``predict_case``.

Results go to ``predictions.csv`` / ``predictions.json`` in the output folder, merged with rows
already there (``prediction_merge``), so ``-num_parts/-part_id`` processes can share a folder.
Loading a model folder also loads its folds' ``calibration.json`` (``calibration.store``); each
case's classification probabilities are then temperature-scaled before its row is made, and the
row says so (``probabilities_calibrated``). ``calibration = None`` turns that off.
"""
from __future__ import annotations

import contextlib
import os
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from acvl_utils.cropping_and_padding.padding import pad_nd_image
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from nnunetv2.configuration import default_num_processes
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian
from nnunetv2.utilities.helpers import empty_cache
from torch._dynamo import OptimizedModule

from nnunet_mtl.inference import tiling as batched_window
from nnunet_mtl.inference.tiling import DEFAULT_TILE_BATCH
from nnunet_mtl.calibration.store import EnsembleCalibration
from nnunet_mtl.inference.case_aggregation import (DEFAULT_AGGREGATION, DEFAULT_FOREGROUND_FLOOR, MASKLESS_AGGREGATION,
                                         Aggregation)
from nnunet_mtl.inference.case_collector import CaseCollector, CaseHeads
from nnunet_mtl.dataset_spec import DatasetSpec, has_block, targets_from_plans
from nnunet_mtl.model.network import unwrap
from nnunet_mtl.inference.record import CSV_NAME, JSON_NAME, merge_into_folder  # noqa: F401 (re-exported)
from nnunet_mtl.targets import TargetSpec


class nnUNetPredictorMTL(nnUNetPredictor):
    def __init__(self, *args, head_aggregation: str = DEFAULT_AGGREGATION,
                 foreground_floor: float = DEFAULT_FOREGROUND_FLOOR, tile_batch: int = DEFAULT_TILE_BATCH, **kwargs):
        super().__init__(*args, **kwargs)
        self.requested_aggregation = Aggregation(head_aggregation, foreground_floor)  # checks the name early
        if int(tile_batch) < 1:
            raise ValueError(f"tile_batch must be >= 1, got {tile_batch}")
        self.tile_batch = int(tile_batch)  # network inputs (tiles x mirrors) per forward; 1: nnU-Net's own loop
        self.collector = CaseCollector()
        self.calibration: Optional[EnsembleCalibration] = None  # the folds' temperatures, set on loading

    def initialize_from_trained_model_folder(self, model_training_output_dir: str, use_folds,
                                             checkpoint_name: str = 'checkpoint_final.pth'):
        """nnU-Net's loading, then the loaded folds' calibration files (None when no fold has one)."""
        if use_folds is None:
            use_folds = nnUNetPredictor.auto_detect_available_folds(model_training_output_dir, checkpoint_name)
        super().initialize_from_trained_model_folder(model_training_output_dir, use_folds, checkpoint_name)
        self.calibration = EnsembleCalibration.from_fold_dirs(
            os.path.join(model_training_output_dir, f"fold_{f}") for f in use_folds)

    @property
    def spec(self) -> TargetSpec:
        return targets_from_plans(self.plans_manager.plans)

    @property
    def aggregation(self) -> Aggregation:
        return aggregation_for(self.dataset_json, self.requested_aggregation)

    @property
    def effective_aggregation(self) -> str:
        return self.aggregation.rule

    # ------------------------------------------------------------------ one case
    def predict_case(self, data: torch.Tensor, case_id: Optional[str] = None) -> Tuple[torch.Tensor, CaseHeads]:
        """Segmentation logits and head outputs of one preprocessed case ``(c, *spatial)``: with the
        loaded folds, or, after ``manual_initialization`` without parameters, the network's weights."""
        self.collector.begin_case(case_id, self.aggregation)
        try:
            if self.list_of_parameters:
                logits = self.predict_logits_from_preprocessed_data(data)
            else:
                logits = self.predict_sliding_window_return_logits(data)
        except BaseException:
            self.collector.abort_case()
            raise
        return logits, self.collector.end_case()

    # ------------------------------------------------------------------ head outputs only (classify)
    def predict_heads(self, data: torch.Tensor, case_id: Optional[str] = None) -> CaseHeads:
        """Head outputs of one preprocessed case, as ``predict_case(...)[1]`` gives them. Where that is exact
        (``heads_only_exact``) only the encoder and heads run, for every tile and mirror; else the full pass."""
        padded, slicers = self._padded_tiles(data)
        if not self._heads_only_exact(len(slicers)):
            return self.predict_case(data, case_id)[1]
        self.collector.begin_case(case_id, self.aggregation)
        n_threads = torch.get_num_threads()  # as nnU-Net's predict_logits_from_preprocessed_data does
        torch.set_num_threads(min(default_num_processes, n_threads))
        try:
            for params in self.list_of_parameters or [None]:
                if params is not None:
                    (self.network._orig_mod if isinstance(self.network, OptimizedModule) else
                     self.network).load_state_dict(params)
                self.network = self.network.to(self.device)
                self.network.eval()
                self.collector.begin_fold()
                net = unwrap(self.network)
                forward_heads = getattr(self.network, "forward_heads", net.forward_heads)  # the backend's, if any
                # no decoder, so no segmentation: the foreground is not computed (0 here, and the rule does not
                # read it: one tile, or a rule with floor 1)
                with torch.autocast(self.device.type) if self.device.type == "cuda" else contextlib.nullcontext():
                    batched_window.heads_window(
                        lambda x: net.outputs_to_predictions(forward_heads(x)), padded, slicers,
                        self.allowed_mirroring_axes if self.use_mirroring else None, self.device, self.tile_batch,
                        lambda heads: self.collector.add_tile(torch.zeros(()), heads))
                self.collector.end_fold()
        except BaseException:
            self.collector.abort_case()
            raise
        finally:
            torch.set_num_threads(n_threads)
        return self.collector.end_case()

    def heads_only_exact(self, data: torch.Tensor) -> bool:
        """Whether the encoder alone gives this case's head outputs exactly: no head reads the segmentation,
        and the tiles' foreground does not matter (one tile, or a rule that weights tiles equally)."""
        return self._heads_only_exact(len(self._padded_tiles(data)[1]))

    def _heads_only_exact(self, n_tiles: int) -> bool:
        net = unwrap(self.network)
        if not hasattr(net, "forward_heads") or net.heads_need_segmentation:
            return False
        return self.aggregation.floor == 1.0 or n_tiles == 1

    def _padded_tiles(self, data: torch.Tensor):
        """The case padded to the patch size and its tiles, as nnU-Net's sliding window makes them."""
        padded, _ = pad_nd_image(data, self.configuration_manager.patch_size, 'constant', {'value': 0}, True, None)
        return padded, self._internal_get_sliding_window_slicers(padded.shape[1:])

    # ------------------------------------------------------------------ per fold, per tile (nnU-Net's hooks)
    def predict_sliding_window_return_logits(self, input_image: torch.Tensor):
        logits = super().predict_sliding_window_return_logits(input_image)
        if self.collector.in_case:
            self.collector.end_fold()
        return logits

    def _internal_predict_sliding_window_return_logits(self, data, slicers, do_on_device: bool = True):
        if self.collector.in_case:
            self.collector.begin_fold()  # again when nnU-Net retries on the CPU after running out of GPU memory
        if self.tile_batch == 1:
            return super()._internal_predict_sliding_window_return_logits(data, slicers, do_on_device)
        in_case = self.collector.in_case
        empty_cache(self.device)
        return batched_window.sliding_window(
            (lambda x: self.network(x, with_heads=True)) if in_case else self.network, data, slicers,
            self.configuration_manager.patch_size, self.label_manager.num_segmentation_heads,
            self.allowed_mirroring_axes if self.use_mirroring else None, self.use_gaussian, self.device,
            self.device if do_on_device else torch.device("cpu"), self.tile_batch,
            on_tile=(lambda seg, heads: self.collector.add_tile(self._foreground_fraction(seg), heads))
            if in_case else None,
            heads_of=unwrap(self.network).outputs_to_predictions if in_case else None)

    @torch.inference_mode()
    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        if not self.collector.in_case:
            return super()._internal_maybe_mirror_and_predict(x)
        network = self.network
        passes = _HeadPasses(network)
        self.network = passes  # nnU-Net's mirror loop calls self.network(x) once per mirror
        try:
            seg = super()._internal_maybe_mirror_and_predict(x)
        finally:
            self.network = network
        self.collector.add_tile(self._foreground_fraction(seg), passes.mean())
        return seg

    def _foreground_fraction(self, seg: torch.Tensor) -> torch.Tensor:
        """Gaussian-weighted mean foreground probability of one tile's mirror-averaged logits (0-d)."""
        seg = seg[0].float()
        fg = torch.sigmoid(seg).amax(0) if self.label_manager.has_regions else 1.0 - torch.softmax(seg, 0)[0]
        if not self.use_gaussian:
            return fg.mean()
        g = compute_gaussian(tuple(self.configuration_manager.patch_size), sigma_scale=1. / 8,
                             value_scaling_factor=10, device=fg.device).float()
        return (fg * g).sum() / g.sum()

    # ------------------------------------------------------------------ many cases -> CSV
    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = default_num_processes):
        """nnU-Net's loop; each item is one case (named after its output file). nnU-Net exports in
        worker processes and waits only at the end, so between items the rows of earlier cases whose
        mask is written are handed to ``write_case_table``, the rest when the loop is done: a killed
        run keeps the rows of its finished cases, and no row is written before its mask."""
        waiting = []  # (ofile, heads, stat of a mask there before) of cases whose rows are not handed over yet

        def announced():
            for n, item in enumerate(data_iterator):
                self._hand_over(waiting, exported_only=True)
                ofile = item['ofile']
                name = os.path.basename(ofile) if ofile is not None else f"case_{n:04d}"
                before = self._mask_stat(ofile) if ofile is not None else None
                self.collector.begin_case(name, self.aggregation)
                yield item  # nnU-Net predicts this case before it asks for the next one
                heads = self.collector.end_case()
                if ofile is not None:  # in-memory results (no file) have no row
                    waiting.append((ofile, heads, before))

        try:
            ret = super().predict_from_data_iterator(announced(), save_probabilities,
                                                     num_processes_segmentation_export)
        finally:
            self.collector.abort_case()
            if isinstance(data_iterator, MultiThreadedAugmenter):
                data_iterator._finish()
        self._hand_over(waiting, exported_only=False)  # nnU-Net has waited for every export
        return ret

    def _hand_over(self, waiting: list, exported_only: bool) -> None:
        """``write_case_table`` for the waiting cases (only those whose mask is complete when
        ``exported_only``), per output folder; removes them from ``waiting``."""
        ready = [w for w in waiting if not exported_only or self._exported(w[0], w[2])]
        if not ready:
            return
        handed = {id(w) for w in ready}
        waiting[:] = [w for w in waiting if id(w) not in handed]
        for folder in sorted({os.path.dirname(o) for o, _, _ in ready}):
            self.write_case_table(folder, {h.case_id: h.outputs for o, h, _ in ready if os.path.dirname(o) == folder})

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

    @property
    def outputs_calibrated(self) -> bool:
        """Whether rows made now carry calibrated probabilities (the ``probabilities_calibrated`` flag)."""
        return self.calibration is not None and bool(self.spec.classification_targets)

    def calibrated_outputs(self, outputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """One case's outputs with the classification probabilities calibrated (unchanged without calibration)."""
        return outputs if self.calibration is None else self.calibration.apply_outputs(self.spec, outputs)

    def write_case_table(self, folder: str, outputs: Dict[str, Dict[str, np.ndarray]]) -> str:
        """Merge these cases' rows (calibrated when the folds have calibration files) into
        folder/predictions.csv|json; return the CSV path."""
        outputs = {cid: self.calibrated_outputs(out) for cid, out in outputs.items()}
        return merge_into_folder(folder, self.spec, outputs, self.outputs_calibrated)


def aggregation_for(dataset_json: Optional[dict], requested: Aggregation) -> Aggregation:
    """The requested rule; a model trained without masks has no meaningful foreground: plain mean."""
    dataset_json = dataset_json or {}
    if not has_block(dataset_json) or DatasetSpec.from_dataset_json(dataset_json).has_masks:
        return requested
    return Aggregation(MASKLESS_AGGREGATION, requested.foreground_floor)


class _HeadPasses:
    """Stands in for the network during one tile's mirror loop (nnU-Net's own): every forward
    returns the segmentation nnU-Net expects and keeps the same pass's head outputs (converted to
    probabilities / values; image-level, so a mirrored pass needs no flip back)."""

    def __init__(self, network: torch.nn.Module):
        self.network = network
        self.net = unwrap(network)
        self.sum: Optional[Dict[str, torch.Tensor]] = None
        self.n = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        seg, raw = self.network(x, with_heads=True)
        out = self.net.outputs_to_predictions(raw)
        self.sum = out if self.sum is None else {k: self.sum[k] + v for k, v in out.items()}
        self.n += 1
        return seg

    def mean(self) -> Dict[str, torch.Tensor]:
        return {k: (v / self.n)[0].float() for k, v in self.sum.items()}
