"""Pooled encoder features of a trained nnU-Net model (any trainer), cached per case.

The model is loaded with nnU-Net's own ``nnUNetPredictor.initialize_from_trained_model_folder``
(our trainers are found through ``nnUNet_extTrainer``) and run with its own sliding window
(``predict_logits_from_preprocessed_data``: every tile, every fold, mirrors when asked). Two
forward hooks watch it: one on ``network.encoder`` keeps the skips of the forward in progress, one
on the network hands them, with the forward's segmentation logits, to a ``StagePooler``
(see ``pooling`` for the pools). The network is not changed; the logits are discarded.

Case sources: ``preprocessed_cases`` (nnU-Net's dataset class over a preprocessed folder made
with the model's plans) or ``raw_cases`` (image files, preprocessed with the model's own
preprocessor). The predictor is only loaded when a case is missing from the cache, so a second
run over cached cases does no sliding window at all.
"""
from __future__ import annotations

import glob
import logging
import os
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
import torch

from nnunet_mtl.frozen.cache import FeatureCache, file_signature, model_key
from nnunet_mtl.model.pooling import StagePooler, foreground_probability

log = logging.getLogger(__name__)


@dataclass
class CaseSource:
    """One case: its id, a signature of its input files, and how to get its preprocessed array."""
    case_id: str
    signature: str
    load: Callable  # (predictor) -> np.ndarray [C, *spatial], preprocessed with the model's plans


def preprocessed_cases(folder: str, case_ids: Optional[Iterable[str]] = None) -> List[CaseSource]:
    """Cases of an nnU-Net preprocessed data folder (e.g. ``.../nnUNetPlans_3d_fullres``)."""
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    dataset = infer_dataset_class(folder)(folder, list(case_ids) if case_ids is not None else None)

    def loader(key):
        def load(_predictor):
            data = dataset.load_case(key)[0]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return np.asarray(data[:])
        return load

    sources = []
    for key in sorted(dataset.identifiers):
        files = [f for f in glob.glob(os.path.join(folder, glob.escape(key) + ".*"))
                 if os.path.basename(f).split(".", 1)[0] == key]
        sources.append(CaseSource(key, file_signature(files), loader(key)))
    return sources


def raw_cases(files_per_case: Dict[str, Sequence[str]]) -> List[CaseSource]:
    """Cases given as image files in nnU-Net's format, ``{case_id: [CASE_0000.nii.gz, ...]}``
    (other formats: convert with ``nnunet_mtl.inference.folders.prepare_inputs`` first)."""
    def loader(files):
        def load(predictor):
            pre = predictor.configuration_manager.preprocessor_class(verbose=False)
            data, _, _ = pre.run_case(list(files), None, predictor.plans_manager, predictor.configuration_manager,
                                      predictor.dataset_json)
            return data
        return load

    return [CaseSource(cid, file_signature(files), loader(files)) for cid, files in sorted(files_per_case.items())]


@contextmanager
def capture_encoder(network: torch.nn.Module, pooler_ref: dict, has_regions: bool):
    """Hooks that feed every forward's skips + foreground probability to ``pooler_ref['pooler']``."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian
    from nnunet_mtl.model.network import unwrap
    net = unwrap(network)
    pending = {}
    gaussians = {}

    def on_encoder(_module, _inputs, output):
        pending["skips"] = output if isinstance(output, (list, tuple)) else [output]

    def on_network(_module, _inputs, output):
        seg = output[0] if isinstance(output, tuple) else output   # MTL networks may return (seg, heads)
        if isinstance(seg, (list, tuple)):                          # deep supervision: full resolution first
            seg = seg[0]
        shape = tuple(seg.shape[2:])
        if shape not in gaussians:
            gaussians[shape] = (compute_gaussian(shape, sigma_scale=1. / 8, value_scaling_factor=10, device=seg.device)
                                if pooler_ref.get("use_gaussian", True) else torch.ones(shape, device=seg.device))
        pooler_ref["pooler"].add(pending.pop("skips"), foreground_probability(seg, has_regions), gaussians[shape])

    handles = [net.encoder.register_forward_hook(on_encoder), net.register_forward_hook(on_network)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class EncoderFeatureExtractor:
    """Pooled per-stage encoder features of one trained model folder, cached on disk.

    Args:
        model_folder: nnU-Net results folder of the model (holds plans.json and fold_X/).
        folds: folds whose checkpoints are run (their features are averaged, as nnU-Net ensembles).
        checkpoint: checkpoint file name in each fold folder.
        cache_dir: where features are kept (default: ``<model_folder>/frozen_features``).
        use_mirroring: test-time mirroring (default off: one forward per tile; pools are flip-invariant).
        step_size: sliding-window tile step (nnU-Net's default 0.5).
    """

    def __init__(self, model_folder: str, folds: Sequence = (0,), checkpoint: str = "checkpoint_final.pth",
                 cache_dir: Optional[str] = None, device: str = "cpu", use_mirroring: bool = False,
                 step_size: float = 0.5):
        self.model_folder = os.path.abspath(model_folder)
        self.folds = [f if f == "all" else int(f) for f in folds]
        self.checkpoint = checkpoint
        self.device = device
        self.use_mirroring = use_mirroring
        self.step_size = step_size
        settings = {"use_mirroring": use_mirroring, "step_size": step_size, "folds": [str(f) for f in self.folds],
                    "checkpoint": checkpoint}
        key = model_key(self.model_folder, self.folds, checkpoint, settings)
        self.cache = FeatureCache(cache_dir or os.path.join(self.model_folder, "frozen_features"), key,
                                  {"model_folder": self.model_folder, **settings})
        self._predictor = None
        self.stats = {"cached": 0, "computed": 0, "forwards": 0}

    @property
    def predictor(self):
        """nnU-Net's predictor for the model, loaded on first use."""
        if self._predictor is None:
            from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
            from nnunet_mtl.planning import add_trainer_path
            add_trainer_path()
            dev = torch.device(self.device)
            p = nnUNetPredictor(tile_step_size=self.step_size, use_gaussian=True, use_mirroring=self.use_mirroring,
                                perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
            p.initialize_from_trained_model_folder(self.model_folder, self.folds, self.checkpoint)
            if hasattr(p.network, "_orig_mod"):  # nnUNet_compile: hooks belong on the plain module
                p.network = p.network._orig_mod
            self._predictor = p
        return self._predictor

    def features(self, sources: Sequence[CaseSource]) -> Dict[str, Dict[str, np.ndarray]]:
        """{case_id: pooled features (see ``pooling.StagePooler.result``)}; computes only uncached cases."""
        out = {}
        for src in sources:
            cached = self.cache.load(src.case_id, src.signature)
            if cached is not None:
                self.stats["cached"] += 1
                out[src.case_id] = cached
                continue
            out[src.case_id] = self._compute(src)
            self.cache.save(src.case_id, src.signature, out[src.case_id])
            self.stats["computed"] += 1
        return out

    def _compute(self, src: CaseSource) -> Dict[str, np.ndarray]:
        predictor = self.predictor
        data = torch.from_numpy(np.ascontiguousarray(src.load(predictor)))
        pooler, _ = pool_case(predictor, data, predictor.predict_logits_from_preprocessed_data)
        self.stats["forwards"] += pooler.n_forwards
        log.debug("%s: %d forwards", src.case_id, pooler.n_forwards)
        return pooler.result()


def pool_case(predictor, data: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor]):
    """(pools, logits) of one preprocessed case: ``run(data)`` (nnU-Net's sliding window of ``predictor``)
    under the encoder hooks. One function for fitting and for prediction, so a probe sees at prediction
    exactly the kind of features it was fitted on."""
    ref = {"pooler": StagePooler(), "use_gaussian": predictor.use_gaussian}
    with capture_encoder(predictor.network, ref, predictor.label_manager.has_regions):
        logits = run(data)
    return ref["pooler"], logits
