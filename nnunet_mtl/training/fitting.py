"""Fitting heads in closed form on a trained model, and writing them into its checkpoints.

Per fold of the model's own split (``splits_final.json``): the model's fold-k network pools every training
and validation case over its whole sliding window (``predictor.case_pools``: each tile's unmirrored forward,
the very numbers inference reads), a linear model per target is fitted on the training cases
(``linear_fit``), and the result is written into the fold's checkpoint as the network's heads. A model
folder with fitted heads is a model folder like any other: ``nnunet_mtl_predict``, classify, Grad-CAM, the
review pages and DICOM SR load it with the one loader.

* Our own model (the pipeline's default, ``--heads fitted``): the heads of ``fold_k/checkpoint_final.pth``
  are replaced in place; the U-Net's weights are not touched.
* A stock nnU-Net model (``nnunet_mtl_add_heads -m STOCK -o OUT``): ``OUT`` becomes a model folder of ours
  (plans with the targets, ``dataset.json`` with the labels, per fold the stock checkpoint with its weights
  unchanged plus the fitted heads, trainer ``nnUNetTrainerMTL``), so its masks are the stock model's.

Each fold's ``validation/predictions.csv`` then holds the fitted heads' predictions of the fold's validation
cases (out of fold: neither the network nor the heads saw them), ``validation/mtl_summary.json`` their
scores, and ``calibration.json`` temperatures fitted on them. The checkpoint records what the heads were
fitted from (``mtl_heads``: the U-Net weights' hash, labels, split, stages, pools, seed); a fold fitted from
the same request is kept, so re-running costs nothing and never makes earlier predictions stale. Pool sums
are cached per case (``feature_cache``), keyed by the U-Net weights and the case's files.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import sklearn
import torch
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_mtl.calibration.conformal_store import FILE_NAME as CONFORMAL_FILE, conformal_fold, \
    describe as describe_conformal
from nnunet_mtl.calibration.store import calibrate_fold
from nnunet_mtl.conversion.provenance import content_hash
from nnunet_mtl.dataset_spec import PLANS_KEY, DatasetSpec, targets_from_plans, targets_to_plans
from nnunet_mtl.evaluation.summary import whole_case_summary
from nnunet_mtl.conversion.file_names import trained_folds
from nnunet_mtl.inference import ood
from nnunet_mtl.inference.openvino_backend import attach
from nnunet_mtl.inference.predictor import nnUNetPredictorMTL
from nnunet_mtl.io_utils import atomic_write_json, read_json
from nnunet_mtl.model.network import MTLNetwork, unet_weights_hash, unwrap
from nnunet_mtl.model.pooling import PoolRequest, resolve_stages
from nnunet_mtl.prediction_table import make_row, read as read_table, write as write_table
from nnunet_mtl.targets import CaseTable, TargetSpec, read_labels_csv
from nnunet_mtl.training.feature_cache import FeatureCache, preprocessed_cases
from nnunet_mtl.training.linear_fit import FitError, fit_heads_from_features
from nnunet_mtl.training.trainers.nnUNetTrainerMTL import SEG_ACTIVATION_KEY, nnUNetTrainerMTL

log = logging.getLogger(__name__)

INFO_KEY = "mtl_heads"          # in a checkpoint: how its heads were set (absent: trained with the network)
FITTED = "fitted"
FORMAT = 2
FIT_STEP_SIZE = 0.5             # the sliding window the features come from (nnU-Net's default; inference's too)
SUMMARY_FILE = "validation_summary.json"
# What fitted heads may read by default: per encoder stage the global and foreground pools, and the segmentation's
# own measurements (per structure volume, fraction, intensity inside); each target reads the combination its CV
# prefers. The plateaued convergence study of 2026-12-07 (3 seeds, held-out hippocampus, docs/benchmarks.md):
# volume r 0.895 (the predicted mask's own volume: 0.896), size AUC 0.935, texture AUC 0.691; every pool for
# every target: 0.835 / 0.887 / 0.627.
FIT_POOLS = ("global", "foreground", "measures")


class FittingError(ValueError):
    """Heads cannot be fitted on this model or these labels; the message names what and why."""


@dataclass
class SourceModel:
    """A trained nnU-Net results folder (ours or stock) and what fitting reads from it."""
    folder: str
    plans: dict
    dataset_json: dict

    @classmethod
    def open(cls, folder: str) -> "SourceModel":
        folder = os.path.abspath(folder)
        for name in ("plans.json", "dataset.json"):
            if not os.path.isfile(os.path.join(folder, name)):
                raise FittingError(f"{folder}: not an nnU-Net model folder (no {name})")
        return cls(folder, read_json(os.path.join(folder, "plans.json")),
                   read_json(os.path.join(folder, "dataset.json")))

    def checkpoint(self, fold: int, name: str) -> dict:
        path = os.path.join(self.folder, f"fold_{fold}", name)
        if not os.path.isfile(path):
            raise FittingError(f"{path}: checkpoint not found")
        return torch.load(path, map_location="cpu", weights_only=False)

    def preprocessed_folder(self) -> str:
        root = os.environ.get("nnUNet_preprocessed")
        if not root:
            raise FittingError("nnUNet_preprocessed is not set: the model's split and preprocessed cases live there")
        return os.path.join(root, self.plans["dataset_name"])

    def splits(self, splits_file: Optional[str]) -> list:
        path = splits_file or os.path.join(self.preprocessed_folder(), "splits_final.json")
        if not os.path.isfile(path):
            raise FittingError(f"{path}: the model's splits not found (pass the splits file)")
        return read_json(path)

    def data_folder(self, configuration: str) -> str:
        ident = self.plans["configurations"][configuration]["data_identifier"]
        return os.path.join(self.preprocessed_folder(), ident)


def fitted_info(checkpoint: dict) -> Optional[dict]:
    """What a checkpoint's heads were fitted from (None: trained with the network)."""
    info = checkpoint.get(INFO_KEY)
    return info if isinstance(info, dict) and info.get("kind") == FITTED else None


def load_table(source: SourceModel, labels_csv: Optional[str], spec: Optional[TargetSpec]) -> CaseTable:
    """The labels CSV (with an optional spec), else the ``mtl`` block of the model's dataset.json."""
    if labels_csv:
        return read_labels_csv(labels_csv, spec)
    try:
        return DatasetSpec.from_dataset_json(source.dataset_json, os.path.join(source.folder, "dataset.json")).table
    except ValueError as e:
        raise FittingError(f"{e}; give the labels with --labels_csv") from None


def fit_heads(model_dir: str, out_dir: Optional[str] = None, labels_csv: Optional[str] = None,
              spec: Optional[TargetSpec] = None, folds: Optional[Sequence[int]] = None,
              splits_file: Optional[str] = None, checkpoint: str = "checkpoint_final.pth", device: str = "cpu",
              backend: str = "torch", cache_dir: Optional[str] = None, stages: Optional[Sequence[int]] = None,
              pools: Sequence[str] = FIT_POOLS, seed: int = 0, overwrite: bool = False,
              report: Callable[[str], None] = print, select_pools: bool = True) -> dict:
    """Fit heads per fold of ``model_dir`` and write them into ``out_dir``'s checkpoints (None or the same folder:
    in place, for a model of ours). ``select_pools``: each target reads the combination of ``pools`` its CV on
    the training cases scores best (``linear_fit.select_and_fit``). Returns the out-of-fold summary over every
    fold's validation cases."""
    source = SourceModel.open(model_dir)
    out_dir = os.path.abspath(out_dir or source.folder)
    in_place = out_dir == source.folder
    table = load_table(source, labels_csv, spec)
    spec = table.spec
    if in_place and PLANS_KEY in source.plans and targets_from_plans(source.plans) != spec:
        raise FittingError(f"{source.folder}: the labels' targets {spec.names} are not the model's "
                           f"{targets_from_plans(source.plans).names}; write the heads into a new folder (-o)")
    folds = [int(f) for f in folds] if folds else trained_folds(source.folder, checkpoint)
    if not folds:
        raise FittingError(f"{source.folder}: no fold_k/{checkpoint}; train the model first")
    splits_path = splits_file or os.path.join(source.preprocessed_folder(), "splits_final.json")
    splits = source.splits(splits_path)
    labels_file = labels_csv or os.path.join(source.folder, "dataset.json")
    if not in_place:
        _write_model_files(source, out_dir, table)
    plans_manager = PlansManager(os.path.join(out_dir, "plans.json"))
    dataset_json = read_json(os.path.join(out_dir, "dataset.json"))
    request_base = {"format": FORMAT, "labels_sha256": content_hash(labels_file),
                    "splits_sha256": content_hash(splits_path), "targets": spec.to_json(),
                    "stages": None if stages is None else [int(s) for s in stages], "pools": list(pools),
                    "step_size": FIT_STEP_SIZE, "seed": seed, "select_pools": bool(select_pools)}
    cache_root = os.path.abspath(cache_dir or os.path.join(out_dir, "feature_cache"))
    rows_all, per_fold = [], {}
    for k in folds:
        if k >= len(splits):
            raise FittingError(f"fold {k}: the model's split {splits_path} has {len(splits)} folds")
        ckpt = source.checkpoint(k, checkpoint)
        configuration = ckpt["init_args"]["configuration"]
        request = {**request_base, "unet_sha256": unet_weights_hash(ckpt["network_weights"])}
        fold_dir = os.path.join(out_dir, f"fold_{k}")
        target_ckpt = os.path.join(fold_dir, checkpoint)
        if not overwrite and _fitted_from(target_ckpt, request) and os.path.isfile(_summary_path(fold_dir)):
            report(f"{fold_dir}: heads already fitted from these weights, labels and split; kept "
                   f"(--overwrite fits them again)")
            per_fold[k] = read_json(_summary_path(fold_dir))
            if not os.path.isfile(os.path.join(fold_dir, CONFORMAL_FILE)):  # fitted before conformal sets existed
                per_fold[k]["conformal"] = describe_conformal(conformal_fold(fold_dir, spec, table))
                atomic_write_json(_summary_path(fold_dir), per_fold[k])
            rows_all.extend(_validation_rows(fold_dir, spec))
            continue
        predictor = _fold_engine(plans_manager, configuration, dataset_json, ckpt, device, backend, stages, pools)
        train_ids = sorted(c for c in splits[k]["train"] if c in set(table.case_ids))
        val_ids = sorted(splits[k]["val"])
        cache = FeatureCache(cache_root, request["unet_sha256"], {"model": source.folder, "fold": k})
        net = predictor.mtl_network
        head_request = net.request
        with contextlib.closing(predictor):
            sums = _case_sums(predictor, head_request, preprocessed_cases(source.data_folder(configuration),
                                                                          train_ids + val_ids), cache)
        reader = next(iter(net.heads.values()))  # every head reads the same stages and pools
        x = {c: reader.features_of(s)[0].numpy().astype(np.float64) for c, s in sums.items()}
        try:
            chosen = fit_heads_from_features(net.heads, spec, np.stack([x[c] for c in train_ids]), train_ids, table,
                                             seed, select_pools)
        except FitError as e:
            unlabelled = len([c for c in splits[k]["train"] if c not in set(table.case_ids)])
            raise FittingError(f"fold {k}: {e}" + (f" ({unlabelled} training cases have no label in "
                                                   f"{labels_file})" if unlabelled else "")) from None
        rows = [make_row(spec, c, predictor.read_pools(sums[c])) for c in val_ids]
        _write_checkpoint(ckpt, net, request, train_ids, chosen, target_ckpt, in_place)
        input_check = ood.fit_fold(fold_dir, x, train_ids, val_ids, reader.read_config)  # ood_score's features
        summary = _write_validation(fold_dir, spec, rows, table, train_ids, chosen, input_check)
        picked = "; ".join(f"{t} reads {'+'.join(c['pools'])}" for t, c in chosen.items() if c["pools"])
        report(f"fold {k}: heads fitted on {len(train_ids)} cases{f' ({picked})' if picked else ''}; out-of-fold "
               f"{summary.get('headline', '')}")
        per_fold[k] = summary
        rows_all.extend(rows)
    overall = whole_case_summary(spec, [r for r in rows_all if r["case_id"] in set(table.case_ids)], table)
    overall["folds"] = {str(k): s for k, s in per_fold.items()}
    atomic_write_json(os.path.join(out_dir, SUMMARY_FILE), overall)
    return overall


def _summary_path(fold_dir: str) -> str:
    return os.path.join(fold_dir, "validation", "mtl_summary.json")


def _validation_rows(fold_dir: str, spec: TargetSpec) -> List[dict]:
    """The rows a kept fold wrote (case id and predicted value per target), for the overall summary."""
    table = read_table(os.path.join(fold_dir, "validation", "predictions.csv"), spec)
    return [{"case_id": c, **{t.name: row[t.name] for t in spec}} for c, row in table.items()]


def _fitted_from(path: str, request: dict) -> bool:
    """Whether the checkpoint at ``path`` has heads fitted from exactly this request."""
    if not os.path.isfile(path):
        return False
    try:
        info = fitted_info(torch.load(path, map_location="cpu", weights_only=False))
    except Exception:  # noqa: BLE001 - an unreadable checkpoint is not a fit to keep
        return False
    return info is not None and all(info.get(k) == v for k, v in json.loads(json.dumps(request)).items())


def _fold_engine(plans_manager: PlansManager, configuration: str, dataset_json: dict, ckpt: dict, device: str,
                 backend: str, stages: Optional[Sequence[int]], pools: Sequence[str]) -> nnUNetPredictorMTL:
    """The engine over this fold's U-Net with heads that read ``stages`` x ``pools`` (not fitted yet)."""
    configuration_manager = plans_manager.get_configuration(configuration)
    n_in = determine_num_input_channels(plans_manager, configuration_manager, dataset_json)
    label_manager = plans_manager.get_label_manager(dataset_json)
    network = nnUNetTrainerMTL.build_network_architecture(plans_manager, configuration_manager, n_in,
                                                          label_manager.num_segmentation_heads, False)
    for head in network.heads.values():
        head.configure(resolve_stages(stages, len(network.encoder.output_channels)), pools)
    unet = {k: v for k, v in ckpt["network_weights"].items() if not k.startswith("heads.")}
    missing = network.load_state_dict(unet, strict=False).missing_keys
    if any(not k.startswith("heads.") for k in missing):
        raise FittingError(f"the checkpoint's network does not match its plans (missing {missing[0]})")
    network.eval()  # the heads' dropout off: cached cases are read without a pass that would set it
    dev = torch.device(device)
    predictor = nnUNetPredictorMTL(tile_step_size=FIT_STEP_SIZE, use_gaussian=True, use_mirroring=False,
                                   perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                   verbose_preprocessing=False, allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration_manager, None, dataset_json,
                                    nnUNetTrainerMTL.__name__, ckpt.get("inference_allowed_mirroring_axes"))
    predictor.network, predictor.backend = attach(network, n_in, configuration_manager.patch_size, backend, dev)
    return predictor


def _case_sums(predictor: nnUNetPredictorMTL, request: PoolRequest, sources, cache) -> Dict[str, dict]:
    """{case: pool sums} from the cache where the case's files are unchanged, else from the engine."""
    out = {}
    for src in sources:
        sums = cache.load(src.case_id, src.signature, request)
        if sums is None:
            data = torch.from_numpy(np.ascontiguousarray(src.load(predictor)))
            sums = predictor.case_pools(data, request)[0]
            cache.save(src.case_id, src.signature, sums)
        out[src.case_id] = sums
    return out


def _write_checkpoint(ckpt: dict, network: MTLNetwork, request: dict, train_ids: Sequence[str],
                      chosen: Dict[str, dict], path: str, in_place: bool) -> None:
    """The fold's checkpoint with the fitted heads (atomically); a stock checkpoint becomes one of ours."""
    weights = {k: v for k, v in ckpt["network_weights"].items() if not k.startswith("heads.")}
    weights.update({f"heads.{k}": v.detach().cpu().clone() for k, v in unwrap(network).heads.state_dict().items()})
    out = dict(ckpt, network_weights=weights)
    if not in_place:
        out["trainer_name"] = nnUNetTrainerMTL.__name__
    out[INFO_KEY] = {**json.loads(json.dumps(request)), "kind": FITTED, "train_cases": list(train_ids),
                     **_choices(chosen), "sklearn_version": sklearn.__version__}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    partial = path + ".part"
    torch.save(out, partial)
    os.replace(partial, path)


def _choices(chosen: Dict[str, dict]) -> dict:
    """What the CV chose per target: ``regularisation`` (C or alpha) and ``pools_chosen``."""
    return {"regularisation": {t: c["regularisation"] for t, c in chosen.items()},
            "pools_chosen": {t: c["pools"] for t, c in chosen.items()}}


def _write_validation(fold_dir: str, spec: TargetSpec, rows: List[dict], table: CaseTable,
                      train_ids: Sequence[str], chosen: Dict[str, dict], input_check: Optional[dict] = None) -> dict:
    """The fold's out-of-fold rows, their scores, and the temperatures and conformal scores fitted on them."""
    val_dir = os.path.join(fold_dir, "validation")
    os.makedirs(val_dir, exist_ok=True)
    write_table(os.path.join(val_dir, "predictions.csv"), os.path.join(val_dir, "predictions.json"), spec, rows)
    labelled = set(table.case_ids)
    summary = whole_case_summary(spec, [r for r in rows if r["case_id"] in labelled], table)
    summary.update(heads=FITTED, **_choices(chosen), n_train=len(train_ids), input_check=input_check)
    if spec.classification_targets:
        calibrate_fold(fold_dir, spec, table)
    summary["conformal"] = describe_conformal(conformal_fold(fold_dir, spec, table))  # scores with the temperatures
    atomic_write_json(_summary_path(fold_dir), summary)
    return summary


def _write_model_files(source: SourceModel, out_dir: str, table: CaseTable) -> None:
    """``out_dir`` as a model folder of ours: the stock plans with the targets, dataset.json with the labels."""
    if os.path.isdir(out_dir) and os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, "plans.json")):
        raise FittingError(f"{out_dir}: exists and is not a model folder; choose an empty or new folder")
    os.makedirs(out_dir, exist_ok=True)
    plans = dict(source.plans)
    targets_to_plans(plans, table.spec)
    has_regions = PlansManager(plans).get_label_manager(source.dataset_json).has_regions
    plans.setdefault(SEG_ACTIVATION_KEY, "sigmoid" if has_regions else "softmax")
    atomic_write_json(os.path.join(out_dir, "plans.json"), plans)
    dataset_json = dict(source.dataset_json)
    DatasetSpec(table=table, labels=dataset_json.get("labels", {})).write_into(dataset_json)
    atomic_write_json(os.path.join(out_dir, "dataset.json"), dataset_json)
    for extra in ("dataset_fingerprint.json",):
        if os.path.isfile(os.path.join(source.folder, extra)):
            shutil.copyfile(os.path.join(source.folder, extra), os.path.join(out_dir, extra))
