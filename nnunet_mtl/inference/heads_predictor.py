"""A frozen-heads folder as a predictor: ``inference.predict_folder`` drives it like one of our models.

``FrozenHeadsPredictor`` is nnU-Net's own ``nnUNetPredictor`` loaded from the stock model folder
(the folds and checkpoint asked for), so masks are computed as ``nnUNetv2_predict`` computes them.
Each heads fold's pooled encoder features come from a sliding window with the settings its probe was
fitted with (that fold's weights, the heads' step size and mirroring: ``pool_case``, the function
fitting used): the mask pass of that fold itself when its settings are those (e.g. no mirroring for
heads fitted without), else one more pass after the masks. That fold's probe reads them, and the
folds' outputs are averaged. It offers what ``predict_folder`` and ``prediction_provenance`` ask of a
predictor: ``spec``, ``aggregation``, ``checkpoint_files`` (the stock checkpoints and the heads'
files, so refitted heads make earlier rows stale), ``calibration`` (none: the probes' own
probabilities), ``predict_case`` (in-process engine) and ``predict_from_data_iterator`` +
``write_case_table`` (nnU-Net's multiprocessing engine).
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from batchgenerators.dataloading.multi_threaded_augmenter import MultiThreadedAugmenter
from nnunetv2.configuration import default_num_processes
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunet_mtl.inference.case_collector import CaseHeads
from nnunet_mtl.frozen.extract import pool_case
from nnunet_mtl.frozen.heads_model import INFO_FILE, FrozenHeads
from nnunet_mtl.inference.record import merge_into_folder
from nnunet_mtl.targets import TargetSpec


def is_heads_folder(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, INFO_FILE))


def check_model_folder(folder: str) -> None:
    """One line for a folder that ``-m`` cannot use: neither kind of model, or a stock nnU-Net model
    whose heads are still to be fitted."""
    from nnunet_mtl.dataset_spec import PLANS_KEY
    from nnunet_mtl.io_utils import read_json
    plans = os.path.join(folder, "plans.json")
    if not os.path.isfile(plans):
        raise FileNotFoundError(f"{folder}: neither an nnunet_mtl model folder (no plans.json) nor a heads folder "
                                f"(no {INFO_FILE})")
    if PLANS_KEY not in read_json(plans):
        raise ValueError(f"{folder}: a stock nnU-Net model (no image-level heads); fit heads on it first "
                         f"(nnunet_mtl_add_heads -m {folder} -o HEADS_DIR) and predict with -m HEADS_DIR")


@dataclass(frozen=True)
class ProbeReadout:
    """Where an MTL model's tile -> case rule stands in the provenance: frozen heads have no tile rule
    (the probes read features pooled over the whole case)."""
    rule: str = "frozen_heads_probe"
    floor: float = 0.0


class FrozenHeadsPredictor(nnUNetPredictor):
    def __init__(self, heads: FrozenHeads, **kwargs):
        super().__init__(**kwargs)
        self.heads = heads
        self.calibration = None
        self.checkpoint_files: List[str] = []
        self.mask_folds: List = []
        self.feature_parameters: Dict[int, dict] = {}
        self.last_outputs: Optional[Dict[str, np.ndarray]] = None
        self._mask_position: Dict[int, int] = {}   # heads fold -> its position among the mask folds' weights
        self._shared: Optional[dict] = None
        self.stats = {"feature_passes": 0}          # sliding windows run for the heads alone

    def initialize(self, mask_folds: Sequence, checkpoint: str) -> None:
        """Stock folds (masks) through nnU-Net's loading; each heads fold's weights for its features
        (shared with the mask folds where fold and checkpoint are the same)."""
        stock = self.heads.stock_folder
        self.initialize_from_trained_model_folder(stock, list(mask_folds), checkpoint)
        self.mask_folds = list(mask_folds)
        mask_files = [os.path.join(stock, f"fold_{f}", checkpoint) for f in self.mask_folds]
        feature_files = self.heads.feature_checkpoints()
        for k, path in feature_files.items():
            if path in mask_files:
                self._mask_position[k] = mask_files.index(path)
                self.feature_parameters[k] = self.list_of_parameters[mask_files.index(path)]
            else:
                self.feature_parameters[k] = torch.load(path, map_location="cpu", weights_only=False)["network_weights"]
        self.checkpoint_files = list(dict.fromkeys(mask_files + list(feature_files.values()) + self.heads.files()))

    # ------------------------------------------------------------------ what predict_folder asks of a predictor
    @property
    def spec(self) -> TargetSpec:
        return self.heads.spec

    @property
    def aggregation(self) -> ProbeReadout:
        return ProbeReadout()

    @property
    def outputs_calibrated(self) -> bool:
        return False

    def calibrated_outputs(self, outputs: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        return outputs

    def predict_case(self, data: torch.Tensor, case_id: Optional[str] = None) -> Tuple[torch.Tensor, CaseHeads]:
        logits = self.predict_logits_from_preprocessed_data(data)
        return logits, CaseHeads(case_id, self.last_outputs, self.aggregation)

    def write_case_table(self, folder: str, outputs: Dict[str, Dict[str, np.ndarray]]) -> str:
        return merge_into_folder(folder, self.spec, outputs, False)

    # ------------------------------------------------------------------ one case: stock logits, then the heads
    def predict_logits_from_preprocessed_data(self, data: torch.Tensor) -> torch.Tensor:
        """nnU-Net's ensemble of the mask folds, unchanged; the case's head outputs go to ``last_outputs``.
        A mask fold whose pass is a feature pass (the same weights, step size and mirroring as the probes
        were fitted with) is pooled as it runs; the other heads folds get a pass of their own."""
        self._shared = {"plan": self._shared_positions(), "next": 0, "pools": {}}
        try:
            logits = super().predict_logits_from_preprocessed_data(data)
            pooled = self._shared["pools"]
        finally:
            self._shared = None
        for k in self.heads.probes:
            if k not in pooled:
                with self._feature_pass(k):
                    pooled[k], _ = pool_case(self, data, super().predict_logits_from_preprocessed_data)
                self.stats["feature_passes"] += 1
        self.last_outputs = self.heads.predict({k: p.result() for k, p in pooled.items()})
        return logits

    def predict_sliding_window_return_logits(self, input_image: torch.Tensor):
        """nnU-Net's, once per mask fold (in ``list_of_parameters`` order); pooled when it is a feature pass."""
        shared = getattr(self, "_shared", None)
        fold = None if shared is None else shared["plan"].get(shared["next"])
        if shared is not None:
            shared["next"] += 1
        if fold is None:
            return super().predict_sliding_window_return_logits(input_image)
        shared["pools"][fold], logits = pool_case(self, input_image, super().predict_sliding_window_return_logits)
        return logits

    def _shared_positions(self) -> Dict[int, int]:
        """{position in list_of_parameters: heads fold} of the mask passes that are feature passes."""
        same = (bool(self.use_mirroring) == bool(self.heads.info["use_mirroring"])
                and float(self.tile_step_size) == self.heads.step_size)
        return {i: k for k, i in self._mask_position.items()} if same else {}

    @contextmanager
    def _feature_pass(self, fold: int):
        """Fold ``fold``'s weights alone, with the step size and mirroring the probes were fitted with."""
        saved = self.list_of_parameters, self.tile_step_size, self.use_mirroring
        self.list_of_parameters = [self.feature_parameters[fold]]
        self.tile_step_size, self.use_mirroring = self.heads.step_size, bool(self.heads.info["use_mirroring"])
        try:
            yield
        finally:
            self.list_of_parameters, self.tile_step_size, self.use_mirroring = saved

    # ------------------------------------------------------------------ Grad-CAM (nnunet_mtl.outputs.explain)
    def explain_networks(self):
        """Each heads fold in turn: the stock network with that fold's weights and its probes as torch heads
        (``probe_module``), the shape ``explain`` reads; the network's weights are that fold's meanwhile."""
        from nnunet_mtl.frozen.probe_module import ProbeNetwork, probe_heads
        from nnunet_mtl.model.network import unwrap
        net = unwrap(self.network)
        n_stages = len(net.encoder.output_channels)
        for k, probe in self.heads.probes.items():
            net.load_state_dict(self.feature_parameters[k])
            yield ProbeNetwork(net, probe_heads(probe, n_stages, self.heads.info["stages"], self.heads.info["pools"],
                                                self.configuration_manager.patch_size, self.use_gaussian,
                                                self.label_manager.has_regions).to(next(net.parameters()).device))

    # ------------------------------------------------------------------ nnU-Net's multiprocessing loop
    def predict_from_data_iterator(self, data_iterator, save_probabilities: bool = False,
                                   num_processes_segmentation_export: int = default_num_processes):
        """nnU-Net's loop; each case's head outputs are collected as nnU-Net moves to the next case."""
        done = []

        def announced():
            for item in data_iterator:
                self.last_outputs = None
                yield item  # nnU-Net predicts this case before it asks for the next one
                if item["ofile"] is not None and self.last_outputs is not None:
                    done.append((item["ofile"], self.last_outputs))

        try:
            ret = super().predict_from_data_iterator(announced(), save_probabilities,
                                                     num_processes_segmentation_export)
        finally:
            if isinstance(data_iterator, MultiThreadedAugmenter):
                data_iterator._finish()
        for folder in sorted({os.path.dirname(o) for o, _ in done}):
            self.write_case_table(folder, {os.path.basename(o): out for o, out in done
                                           if os.path.dirname(o) == folder})
        return ret


def load_heads_predictor(heads_dir: str, folds: Optional[Sequence] = None,
                         checkpoint: str = "checkpoint_final.pth", device: str = "cpu", step_size: float = 0.5,
                         use_mirroring: bool = True, verbose: bool = False) -> FrozenHeadsPredictor:
    """The predictor of a frozen-heads folder. Masks ensemble ``folds`` of the stock model with ``checkpoint``
    (default: every trained fold, as ``nnUNetv2_predict``), ``step_size`` and ``use_mirroring``; the heads
    use their fitted folds among ``folds`` (default: all of them)."""
    from nnunet_mtl.planning import add_trainer_path
    folds = None if folds is None else [f if f == "all" else int(f) for f in folds]
    heads = FrozenHeads.load(heads_dir, None if folds is None else [f for f in folds if f != "all"])
    add_trainer_path()  # the stock model may be any trainer nnU-Net finds, ours included
    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    predictor = FrozenHeadsPredictor(heads, tile_step_size=step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                     perform_everything_on_device=dev.type == "cuda", device=dev, verbose=verbose,
                                     verbose_preprocessing=False, allow_tqdm=verbose)
    if folds is None:
        folds = nnUNetPredictor.auto_detect_available_folds(heads.stock_folder, checkpoint)
        if not folds:
            raise FileNotFoundError(f"{heads.stock_folder}: no fold_k/{checkpoint} (the heads' stock model)")
    predictor.initialize(folds, checkpoint)
    return predictor
