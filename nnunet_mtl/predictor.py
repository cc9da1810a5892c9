"""nnUNetPredictorMTL: nnU-Net's predictor that also returns whole-case head outputs.

One pass of nnU-Net's sliding window gives both: the segmentation exactly as stock nnU-Net
computes it, and, for every tile and every mirror, the head outputs of the same forward.
Per case they are aggregated over all tiles (rule below), then averaged over folds.

Aggregation rules (``head_aggregation``):
* ``foreground_weighted`` (default): mean of tile probabilities weighted by the tile's
  Gaussian-weighted mean predicted foreground probability, so tiles that see the structure
  (organ, lesion) dominate; falls back to the plain mean when no tile sees foreground.
* ``mean``: plain mean over tiles (use for mask-free datasets).
A last-tile rule (as public multi-task nnU-Nets use) is deliberately not offered.

Results go to ``predictions.csv`` / ``predictions.json`` in the output folder, merged under a
file lock with rows already there, so ``-num_parts/-part_id`` processes can share a folder.
"""
from __future__ import annotations

import fcntl
import itertools
import os
from contextlib import contextmanager
from typing import Dict, List, Optional

import numpy as np
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from nnunetv2.configuration import default_num_processes
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
from nnunetv2.inference.sliding_window_prediction import compute_gaussian

from nnunet_mtl import prediction_table
from nnunet_mtl.network import unwrap
from nnunet_mtl.dataset_spec import DatasetSpec, has_block, targets_from_plans
from nnunet_mtl.targets import TargetSpec

AGGREGATIONS = ("foreground_weighted", "mean")
CSV_NAME, JSON_NAME = "predictions.csv", "predictions.json"


class nnUNetPredictorMTL(nnUNetPredictor):
    def __init__(self, *args, head_aggregation: str = "foreground_weighted", **kwargs):
        super().__init__(*args, **kwargs)
        if head_aggregation not in AGGREGATIONS:
            raise ValueError(f"head_aggregation must be one of {AGGREGATIONS}, got {head_aggregation!r}")
        self.head_aggregation = head_aggregation
        self._tiles: List[tuple] = []
        self._fold_outputs: List[Dict[str, np.ndarray]] = []
        self._current_case: Optional[str] = None
        self.case_outputs: Dict[str, Dict[str, np.ndarray]] = {}
        self.last_case_outputs: Optional[Dict[str, np.ndarray]] = None

    @property
    def spec(self) -> TargetSpec:
        return targets_from_plans(self.plans_manager.plans)

    # ------------------------------------------------------------------ per tile
    @torch.inference_mode()
    def _internal_maybe_mirror_and_predict(self, x: torch.Tensor) -> torch.Tensor:
        net = unwrap(self.network)
        mirror_axes = self.allowed_mirroring_axes if self.use_mirroring else None
        seg, raw = self.network(x, with_heads=True)
        heads = net.outputs_to_predictions(raw)
        passes = 1
        if mirror_axes is not None:
            assert max(mirror_axes) <= x.ndim - 3, 'mirror_axes does not match the dimension of the input!'
            axes_list = [m + 2 for m in mirror_axes]
            for axes in [c for i in range(len(axes_list)) for c in itertools.combinations(axes_list, i + 1)]:
                s, r = self.network(torch.flip(x, axes), with_heads=True)
                seg += torch.flip(s, axes)
                for name, value in net.outputs_to_predictions(r).items():
                    heads[name] = heads[name] + value
                passes += 1
            seg /= passes
        # kept on the device: converting here would make the CPU wait for the GPU on every tile
        self._tiles.append((self._foreground_weight(seg), {k: (v / passes)[0].float() for k, v in heads.items()}))
        return seg

    def _foreground_weight(self, seg: torch.Tensor) -> torch.Tensor:
        """Gaussian-weighted mean foreground probability of one tile's (mirror-averaged) logits (0-d tensor)."""
        seg = seg[0].float()
        fg = torch.sigmoid(seg).amax(0) if self.label_manager.has_regions else 1.0 - torch.softmax(seg, 0)[0]
        if self.use_gaussian:
            g = compute_gaussian(tuple(self.configuration_manager.patch_size), sigma_scale=1. / 8,
                                 value_scaling_factor=10, device=fg.device).float()
            return (fg * g).sum() / g.sum()
        return fg.mean()

    # ------------------------------------------------------------------ per fold, per case
    def _internal_predict_sliding_window_return_logits(self, data, slicers, do_on_device: bool = True):
        self._tiles = []  # also resets when nnU-Net retries on the CPU after running out of GPU memory
        return super()._internal_predict_sliding_window_return_logits(data, slicers, do_on_device)

    @property
    def effective_aggregation(self) -> str:
        """A model trained without masks has no meaningful foreground: plain mean then."""
        dataset_json = self.dataset_json or {}
        has_masks = DatasetSpec.from_dataset_json(dataset_json).has_masks if has_block(dataset_json) else True
        return self.head_aggregation if has_masks else "mean"

    def predict_sliding_window_return_logits(self, input_image: torch.Tensor):
        logits = super().predict_sliding_window_return_logits(input_image)
        self._tiles = _tiles_to_numpy(self._tiles)  # one transfer per case, after all tiles are queued
        self._fold_outputs.append(aggregate_tiles(self._tiles, self.effective_aggregation))
        return logits

    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        self._fold_outputs = []
        logits = super().predict_logits_from_preprocessed_data(data)
        self.last_case_outputs = average_outputs(self._fold_outputs)
        if self._current_case is not None:
            self.case_outputs[self._current_case] = self.last_case_outputs
        return logits

    def predict_case_targets(self, data: torch.Tensor) -> Dict[str, np.ndarray]:
        """Head outputs for one preprocessed case: with the loaded folds, or, after
        ``manual_initialization`` without parameters, with the network's current weights."""
        if self.list_of_parameters:
            self.predict_logits_from_preprocessed_data(data)
            return self.last_case_outputs
        self._fold_outputs = []
        self.predict_sliding_window_return_logits(data)
        return self._fold_outputs[-1]

    # ------------------------------------------------------------------ many cases -> CSV
    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = default_num_processes):
        self.case_outputs = {}
        ofiles = []

        def tracked():
            for item in data_iterator:
                ofile = item['ofile']
                self._current_case = os.path.basename(ofile) if ofile is not None else f"case_{len(ofiles):04d}"
                ofiles.append(ofile)
                yield item

        try:
            ret = super().predict_from_data_iterator(tracked(), save_probabilities, num_processes_segmentation_export)
        finally:
            self._current_case = None
            if isinstance(data_iterator, MultiThreadedAugmenter):
                data_iterator._finish()
        for folder in sorted({os.path.dirname(o) for o in ofiles if o is not None}):
            cases = {os.path.basename(o) for o in ofiles if o is not None and os.path.dirname(o) == folder}
            self.write_case_table(folder, {c: self.case_outputs[c] for c in cases})
        return ret

    def predict_from_files_threaded(self, source_folder: str, output_folder: str, save_probabilities: bool = False,
                                    overwrite: bool = True, num_parts: int = 1, part_id: int = 0,
                                    export_threads: int = 2, preprocess_threads: int = 2) -> str:
        """Like nnU-Net's predict_from_files (same file discovery, parts and overwrite rules), but
        in-process (see threaded_engine); returns the predictions CSV path."""
        from nnunet_mtl.threaded_engine import run_cases
        inputs, ofiles, _ = self._manage_input_and_output_lists(source_folder, output_folder, None, overwrite,
                                                                part_id, num_parts, save_probabilities)
        if not inputs:
            return os.path.join(output_folder, CSV_NAME)
        self.case_outputs = {}
        run_cases(self, inputs, ofiles, save_probabilities, export_threads, preprocess_threads)
        return self.write_case_table(output_folder, self.case_outputs)

    def write_case_table(self, folder: str, outputs: Dict[str, Dict[str, np.ndarray]]) -> str:
        """Merge these cases' rows into folder/predictions.csv|json (under a lock); return the CSV path."""
        spec = self.spec
        csv_path = os.path.join(folder, CSV_NAME)
        with _locked(os.path.join(folder, ".predictions.lock")):
            rows = {}
            if os.path.isfile(csv_path):
                try:
                    for cid, entry in prediction_table.read(csv_path, spec).items():
                        rows[cid] = prediction_table.make_row(spec, cid, _entry_outputs(spec, entry))
                except Exception as e:
                    raise RuntimeError(f"{csv_path}: existing predictions table does not match this model ({e}); "
                                       f"move it away or choose another output folder") from None
            for cid, out in outputs.items():
                rows[cid] = prediction_table.make_row(spec, cid, out)
            prediction_table.write(csv_path, os.path.join(folder, JSON_NAME), spec, list(rows.values()))
        return csv_path


def aggregate_tiles(tiles, rule: str) -> Dict[str, np.ndarray]:
    """Combine per-tile head outputs of one case (see module docstring for the rules)."""
    if not tiles:
        raise RuntimeError("no tiles were predicted for this case")
    weights = np.array([w for w, _ in tiles], dtype=np.float64)
    if rule == "mean" or weights.sum() <= 1e-6:
        weights = np.ones_like(weights)
    weights = weights / weights.sum()
    names = tiles[0][1].keys()
    return {n: np.sum([w * t[n] for w, (_, t) in zip(weights, tiles)], axis=0) for n in names}


def _tiles_to_numpy(tiles) -> list:
    if not tiles:
        return []
    weights = torch.stack([torch.as_tensor(w).float().reshape(()) for w, _ in tiles]).cpu().numpy()
    names = tiles[0][1].keys()
    stacked = {n: torch.stack([t[n] for _, t in tiles]).cpu().numpy() for n in names}
    return [(float(weights[i]), {n: stacked[n][i] for n in names}) for i in range(len(tiles))]


def average_outputs(per_fold: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    return {n: np.mean([f[n] for f in per_fold], axis=0) for n in per_fold[0]}


def _entry_outputs(spec: TargetSpec, entry: dict) -> Dict[str, np.ndarray]:
    return {t.name: entry["probs"][t.name] if t.is_classification else np.array([entry[t.name]]) for t in spec}


@contextmanager
def _locked(lock_path: str):
    os.makedirs(os.path.dirname(lock_path), exist_ok=True)
    with open(lock_path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
