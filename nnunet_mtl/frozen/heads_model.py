"""Heads on a frozen stock nnU-Net model: fit per fold (out-of-fold validation), save, predict.

A *frozen-heads folder* (``fit_heads`` writes it) holds no network, only a pointer to the stock
model and one fitted probe per fold::

    OUT/frozen_heads.json            stock model folder, its checkpoints' identity, folds, targets,
                                     features used (stages, pools), scikit-learn version
    OUT/fold_k/probe.pkl             the fold's LinearProbe (pickle; load it with the same scikit-learn)
    OUT/fold_k/validation/           predictions.csv|json and mtl_summary.json: the fold's validation
                                     cases, predicted by a probe that never saw them
    OUT/validation_summary.json      the same metrics over every fold's validation cases together
    OUT/feature_cache/               pooled features (``cache``), keyed by checkpoint and case

Fold k uses the stock model's fold-k network for its features and fold k of the stock model's own
split (``splits_final.json``), so neither the network nor the probe saw a validation case.

Prediction: ``FrozenHeads.load`` + ``heads_predictor`` (``nnunet_mtl_predict -m OUT``).
"""
from __future__ import annotations

import json
import logging
import os
import pickle
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from nnunet_mtl import prediction_table
from nnunet_mtl.frozen.cache import file_signature
from nnunet_mtl.frozen.extract import EncoderFeatureExtractor, preprocessed_cases
from nnunet_mtl.model.pooling import POOLS, feature_vector
from nnunet_mtl.frozen.probe import LinearProbe
from nnunet_mtl.file_names import trained_folds
from nnunet_mtl.io_utils import atomic_write_json, read_json
from nnunet_mtl.targets import CaseTable, TargetSpec

log = logging.getLogger(__name__)

INFO_FILE = "frozen_heads.json"
PROBE_FILE = "probe.pkl"
FEATURE_STEP_SIZE = 0.5   # sliding-window step of the features (fitting and prediction)
FORMAT = "nnunet_mtl frozen heads 1"


@dataclass
class StockModel:
    """A trained nnU-Net results folder ``.../DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION``."""
    folder: str
    dataset_name: str
    configuration: str

    @classmethod
    def from_folder(cls, folder: str) -> "StockModel":
        folder = os.path.abspath(folder)
        if not os.path.isfile(os.path.join(folder, "plans.json")):
            raise FileNotFoundError(f"{folder}: not an nnU-Net model folder (no plans.json)")
        parts = os.path.basename(folder).split("__")
        if len(parts) != 3:
            raise ValueError(f"{folder}: expected a folder named TRAINER__PLANS__CONFIGURATION")
        return cls(folder, os.path.basename(os.path.dirname(folder)), parts[2])

    def read_json(self, name: str) -> dict:
        with open(os.path.join(self.folder, name)) as f:
            return json.load(f)

    def folds(self, checkpoint: str) -> List[int]:
        return trained_folds(self.folder, checkpoint)

    def checkpoint_signature(self, fold: int, checkpoint: str) -> str:
        return file_signature([os.path.join(self.folder, f"fold_{fold}", checkpoint)])

    def preprocessed_folder(self) -> str:
        root = os.environ.get("nnUNet_preprocessed")
        if not root:
            raise ValueError("nnUNet_preprocessed is not set: the stock model's split and preprocessed cases "
                               "live there")
        return os.path.join(root, self.dataset_name)

    def splits_path(self) -> str:
        return os.path.join(self.preprocessed_folder(), "splits_final.json")

    def splits(self, splits_file: Optional[str] = None) -> list:
        path = splits_file or self.splits_path()
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: the stock model's splits not found (pass the splits file)")
        with open(path) as f:
            return json.load(f)

    def data_folder(self) -> str:
        ident = self.read_json("plans.json")["configurations"][self.configuration]["data_identifier"]
        return os.path.join(self.preprocessed_folder(), ident)


def load_labels(stock: StockModel, labels_csv: Optional[str], spec: Optional[TargetSpec]) -> CaseTable:
    """The labels CSV (with an optional spec), else the ``mtl`` block of the model's dataset.json."""
    if labels_csv:
        from nnunet_mtl.targets import read_labels_csv
        return read_labels_csv(labels_csv, spec)
    from nnunet_mtl.dataset_spec import DatasetSpec
    return DatasetSpec.from_file(os.path.join(stock.folder, "dataset.json")).table


def _sklearn_version() -> str:
    import sklearn
    return sklearn.__version__


def fit_heads(model_dir: str, out_dir: str, labels_csv: Optional[str] = None, spec: Optional[TargetSpec] = None,
              folds: Optional[Sequence[int]] = None, splits_file: Optional[str] = None,
              checkpoint: str = "checkpoint_final.pth", device: str = "cpu", cache_dir: Optional[str] = None,
              use_mirroring: bool = False, stages: Optional[Sequence[int]] = None, pools: Sequence[str] = POOLS,
              seed: int = 0, overwrite: bool = False, report: Callable[[str], None] = print) -> dict:
    """Fit one probe per fold of the stock model on its training cases; write out-of-fold predictions.

    Heads already fitted in ``out_dir`` from the same request (stock checkpoints, labels file, targets,
    split, folds, features, seed) are kept, not refitted (a refit would make every prediction made with
    them stale); ``overwrite`` refits. Returns the pooled out-of-fold summary (``OUT/validation_summary.json``)."""
    from nnunet_mtl.training.head_metrics import whole_case_summary
    stock = StockModel.from_folder(model_dir)
    table = load_labels(stock, labels_csv, spec)
    spec = table.spec
    folds = [int(f) for f in folds] if folds else stock.folds(checkpoint)
    if not folds:
        raise FileNotFoundError(f"{stock.folder}: no fold_k/{checkpoint}")
    splits_path = splits_file or stock.splits_path()
    splits = stock.splits(splits_path)
    out_dir = os.path.abspath(out_dir)
    cache_dir = os.path.abspath(cache_dir or os.path.join(out_dir, "feature_cache"))
    request = {"format": FORMAT, "stock_model": stock.folder, "checkpoint": checkpoint, "folds": folds,
               "checkpoint_signatures": {str(k): stock.checkpoint_signature(k, checkpoint) for k in folds},
               "labels": _file_identity(labels_csv or os.path.join(stock.folder, "dataset.json")),
               "splits": _file_identity(splits_path), "targets": spec.to_json(),
               "stages": None if stages is None else list(stages), "pools": list(pools),
               "use_mirroring": use_mirroring, "step_size": FEATURE_STEP_SIZE, "seed": seed}
    request = json.loads(json.dumps(request))  # as read back from the info file
    summary_path = os.path.join(out_dir, "validation_summary.json")
    if not overwrite and _fitted_from(out_dir, request) and os.path.isfile(summary_path):
        report(f"{out_dir}: heads already fitted from these inputs; kept (--overwrite fits them again)")
        return read_json(summary_path)
    os.makedirs(out_dir, exist_ok=True)
    data_folder = stock.data_folder()
    labelled = set(table.case_ids)
    all_rows, per_fold = [], {}
    for k in folds:
        if k >= len(splits):
            raise ValueError(f"fold {k}: the stock model's split has {len(splits)} folds")
        train_ids = sorted(c for c in splits[k]["train"] if c in labelled)
        val_ids = sorted(splits[k]["val"])
        extractor = EncoderFeatureExtractor(stock.folder, [k], checkpoint, cache_dir, device, use_mirroring,
                                            FEATURE_STEP_SIZE)
        feats = extractor.features(preprocessed_cases(data_folder, train_ids + val_ids))
        x = {c: feature_vector(feats[c], stages, pools) for c in feats}
        probe = LinearProbe(spec, seed).fit(np.stack([x[c] for c in train_ids]), train_ids, table)
        pred = probe.predict(np.stack([x[c] for c in val_ids]), val_ids)
        rows = [prediction_table.make_row(spec, c, pred[c]) for c in val_ids]
        fold_dir = os.path.join(out_dir, f"fold_{k}")
        val_dir = os.path.join(fold_dir, "validation")
        os.makedirs(val_dir, exist_ok=True)
        prediction_table.write(os.path.join(val_dir, "predictions.csv"), os.path.join(val_dir, "predictions.json"),
                               spec, rows)
        summary = whole_case_summary(spec, [r for r in rows if r["case_id"] in labelled], table)
        summary.update(frozen_features=extractor.stats, regularisation=probe.chosen, n_train=len(train_ids))
        atomic_write_json(os.path.join(val_dir, "mtl_summary.json"), summary)
        _save_probe(os.path.join(fold_dir, PROBE_FILE), probe, k, train_ids)
        log.info("fold %d: %s (features: %s)", k, summary.get("headline", ""), extractor.stats)
        per_fold[k] = summary
        all_rows.extend(rows)
    overall = whole_case_summary(spec, [r for r in all_rows if r["case_id"] in labelled], table)
    overall["folds"] = {str(k): v for k, v in per_fold.items()}
    atomic_write_json(summary_path, overall)
    atomic_write_json(os.path.join(out_dir, INFO_FILE), {**request, "feature_cache": cache_dir,
                                                         "sklearn_version": _sklearn_version()})
    return overall


def _file_identity(path: str) -> dict:
    from nnunet_mtl.conversion.provenance import content_hash
    return {"path": os.path.abspath(path), "sha256": content_hash(path)}


def _fitted_from(out_dir: str, request: dict) -> bool:
    """Whether ``out_dir`` holds heads fitted from exactly this request, every probe present."""
    path = os.path.join(out_dir, INFO_FILE)
    try:
        info = read_json(path)
    except (OSError, ValueError):
        return False
    return (all(info.get(k) == v for k, v in request.items())
            and all(os.path.isfile(os.path.join(out_dir, f"fold_{k}", PROBE_FILE)) for k in request["folds"]))


def _save_probe(path: str, probe: LinearProbe, fold: int, train_ids: Sequence[str]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        pickle.dump({"probe": probe, "fold": fold, "train_cases": list(train_ids),
                     "sklearn_version": _sklearn_version()}, f)
    os.replace(tmp, path)


@dataclass
class FrozenHeads:
    """A frozen-heads folder, loaded: its info and one probe per fold (``folds``: only these)."""
    folder: str
    info: dict
    probes: Dict[int, LinearProbe]

    @classmethod
    def load(cls, folder: str, folds: Optional[Sequence[int]] = None) -> "FrozenHeads":
        folder = os.path.abspath(folder)
        path = os.path.join(folder, INFO_FILE)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{folder}: not a frozen-heads folder (no {INFO_FILE}; "
                                    f"nnunet_mtl_add_heads writes one)")
        with open(path) as f:
            info = json.load(f)
        stock = StockModel.from_folder(info["stock_model"])
        fitted = [int(k) for k in info["folds"]]
        chosen = fitted if folds is None else [k for k in fitted if k in {int(f) for f in folds}]
        if not chosen:
            raise ValueError(f"{folder}: no heads fitted for folds {list(folds)} (fitted: {fitted})")
        probes = {}
        for k in chosen:
            if stock.checkpoint_signature(k, info["checkpoint"]) != info["checkpoint_signatures"][str(k)]:
                raise ValueError(f"{stock.folder}/fold_{k}/{info['checkpoint']} changed since the heads were "
                                   f"fitted: fit them again (nnunet_mtl_add_heads)")
            probe_path = os.path.join(folder, f"fold_{k}", PROBE_FILE)
            if not os.path.isfile(probe_path):
                raise FileNotFoundError(f"{probe_path}: missing (fit the heads again: nnunet_mtl_add_heads)")
            with open(probe_path, "rb") as f:
                saved = pickle.load(f)
            if saved["sklearn_version"] != _sklearn_version():
                log.warning("fold %d: probe fitted with scikit-learn %s, loaded with %s", k, saved["sklearn_version"],
                            _sklearn_version())
            probes[k] = saved["probe"]
        return cls(folder, info, probes)

    @property
    def spec(self) -> TargetSpec:
        return TargetSpec.from_json(self.info["targets"])

    @property
    def stock_folder(self) -> str:
        return self.info["stock_model"]

    @property
    def step_size(self) -> float:
        """The sliding-window step of the features the probes were fitted on."""
        return float(self.info.get("step_size", FEATURE_STEP_SIZE))

    def files(self) -> List[str]:
        """What the heads' predictions depend on besides the stock checkpoints: the info and each probe used."""
        return [os.path.join(self.folder, INFO_FILE)] + [os.path.join(self.folder, f"fold_{k}", PROBE_FILE)
                                                          for k in self.probes]

    def feature_checkpoints(self) -> Dict[int, str]:
        """Per fold of the probes, the stock checkpoint its features come from."""
        return {k: os.path.join(self.stock_folder, f"fold_{k}", self.info["checkpoint"]) for k in self.probes}

    def predict(self, pooled_per_fold: Dict[int, Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        """One case's outputs ``{target: probabilities | [value]}``: each fold's probe on that fold's pooled
        features, averaged over the folds (as nnU-Net averages its folds)."""
        info, sums = self.info, {}
        for k, probe in self.probes.items():
            x = feature_vector(pooled_per_fold[k], info["stages"], info["pools"])[None]
            for name, v in probe.predict(x, ["case"])["case"].items():
                sums[name] = sums.get(name, 0) + np.asarray(v, dtype=np.float64) / len(self.probes)
        return sums
