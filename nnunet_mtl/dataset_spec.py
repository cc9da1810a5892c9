"""The dataset's ``mtl`` block as one typed object: the only place that reads or writes it.

A dataset converted by nnunet_mtl carries, in ``dataset.json`` under ``"mtl"``::

    "mtl": {
      "targets": [...],                 # the image-level targets (TargetSpec)
      "cases": {"case_000": {...}},     # per-case values of every target (CaseTable)
      "has_masks": true,                # false: classification/regression only
      "regions": {"whole": [1, 2]},     # named unions of mask labels, scored like labels
      "lateral_pairs": [["left_lung", "right_lung"]],
      "fixed_validation": ["case_007"], # the layout's own validation cases
      "patients": {"case_000": "p01"},  # for patient-grouped splits
      "source_layout": "pancreas"       # the input layout it was converted from
    }

Conversion builds a ``DatasetSpec`` and writes it; the trainer, predictor, splits, evaluation
and notebook read it back through ``DatasetSpec.from_dataset_json``. An unknown key is an
error naming the key. Label and channel names stay where nnU-Net keeps them (``labels``,
``channel_names``) and are exposed here read-only. The trained model carries the targets in
``plans.json`` under ``PLANS_KEY``, written and read by ``targets_to_plans`` /
``targets_from_plans``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Dict, Mapping, Optional, Sequence, Tuple

from nnunet_mtl.targets import CaseTable, TargetSpec, TargetSpecError

DATASET_JSON_KEY = "mtl"
PLANS_KEY = "mtl_targets"
KEYS = ("targets", "cases", "has_masks", "regions", "lateral_pairs", "fixed_validation", "patients",
        "source_layout")
DESCRIPTION_KEYS = KEYS[2:]  # what conversion adds beside the targets and their values

Pair = Tuple[str, str]


@dataclass(frozen=True)
class DatasetSpec:
    """Everything nnunet_mtl knows about a dataset beyond nnU-Net's own dataset.json keys."""
    table: CaseTable
    has_masks: bool = True
    regions: Mapping[str, Tuple[int, ...]] = field(default_factory=dict)
    lateral_pairs: Tuple[Pair, ...] = ()
    fixed_validation: Tuple[str, ...] = ()
    patients: Mapping[str, str] = field(default_factory=dict)
    source_layout: str = ""
    labels: Mapping[str, object] = field(default_factory=dict)        # nnU-Net's "labels" (name -> value)
    channel_names: Mapping[str, str] = field(default_factory=dict)   # nnU-Net's "channel_names"

    @property
    def targets(self) -> TargetSpec:
        return self.table.spec

    # ------------------------------------------------------------------ reading
    @classmethod
    def from_dataset_json(cls, dataset_json: Mapping, source: str = "dataset.json") -> "DatasetSpec":
        if DATASET_JSON_KEY not in dataset_json:
            raise TargetSpecError(f"{source}: no '{DATASET_JSON_KEY}' block with image-level targets; "
                                  f"convert the dataset with nnunet_mtl (or add the block) first")
        block = dataset_json[DATASET_JSON_KEY]
        if not isinstance(block, Mapping):
            raise TargetSpecError(f"{source}: '{DATASET_JSON_KEY}' must be an object")
        unknown = sorted(set(block) - set(KEYS))
        if unknown:
            raise TargetSpecError(f"{source}: unknown key '{DATASET_JSON_KEY}.{unknown[0]}' "
                                  f"(known: {', '.join(KEYS)})")
        spec = TargetSpec.from_json(block.get("targets", []))
        table = CaseTable.from_mapping(spec, block.get("cases", {}), source=source)
        return cls(table=table,
                   has_masks=bool(block.get("has_masks", True)),
                   regions=_regions(block.get("regions") or {}, source),
                   lateral_pairs=_pairs(block.get("lateral_pairs") or [], source),
                   fixed_validation=tuple(str(c) for c in block.get("fixed_validation") or ()),
                   patients={str(k): str(v) for k, v in (block.get("patients") or {}).items()},
                   source_layout=str(block.get("source_layout") or ""),
                   labels=dict(dataset_json.get("labels", {})),
                   channel_names={str(k): str(v) for k, v in dataset_json.get("channel_names", {}).items()})

    @classmethod
    def from_file(cls, path: str) -> "DatasetSpec":
        try:
            with open(path) as f:
                dataset_json = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise TargetSpecError(f"{path}: cannot read dataset.json ({e})") from None
        return cls.from_dataset_json(dataset_json, source=path)

    # ------------------------------------------------------------------ writing
    def to_block(self) -> dict:
        """The ``mtl`` block (only what nnunet_mtl adds; label/channel names live in nnU-Net's keys)."""
        block = {"targets": self.targets.to_json(), "cases": self.table.to_json(), "has_masks": self.has_masks}
        if self.regions:
            block["regions"] = {k: list(v) for k, v in self.regions.items()}
        if self.lateral_pairs:
            block["lateral_pairs"] = [list(p) for p in self.lateral_pairs]
        if self.fixed_validation:
            block["fixed_validation"] = sorted(self.fixed_validation)
        if self.patients:
            block["patients"] = dict(sorted(self.patients.items()))
        if self.source_layout:
            block["source_layout"] = self.source_layout
        return block

    def write_into(self, dataset_json: dict) -> dict:
        """dataset_json with this spec as its ``mtl`` block (the dict is changed and returned)."""
        dataset_json[DATASET_JSON_KEY] = self.to_block()
        return dataset_json

    @property
    def label_names(self) -> Dict[int, str]:
        """Label value -> name for every non-background integer label."""
        return label_names({"labels": self.labels})


def has_block(dataset_json: Mapping) -> bool:
    """Whether a dataset.json was written by nnunet_mtl (carries the ``mtl`` block)."""
    return DATASET_JSON_KEY in dataset_json


def label_names(dataset_json: Mapping) -> Dict[int, str]:
    """Non-background integer labels of a dataset.json (nnU-Net region lists are skipped)."""
    return {int(v): str(k) for k, v in dataset_json.get("labels", {}).items() if isinstance(v, int) and v != 0}


def targets_from_plans(plans: Mapping) -> TargetSpec:
    """The targets a trained model predicts (copied into its plans at training time)."""
    if PLANS_KEY not in plans:
        raise TargetSpecError(f"plans have no '{PLANS_KEY}' entry: this model was not trained with nnunet_mtl")
    return TargetSpec.from_json(plans[PLANS_KEY])


def targets_to_plans(plans: dict, targets: TargetSpec) -> None:
    """Store the targets in a plans dict, so the model folder alone is enough to predict."""
    plans[PLANS_KEY] = targets.to_json()


def targets_from_model_or_dataset(source: Mapping) -> TargetSpec:
    """Targets from a plans dict (trained model) or a dataset.json dict."""
    if PLANS_KEY in source:
        return targets_from_plans(source)
    return DatasetSpec.from_dataset_json(source).targets


def _regions(raw: Mapping, source: str) -> Dict[str, Tuple[int, ...]]:
    if not isinstance(raw, Mapping):
        raise TargetSpecError(f"{source}: '{DATASET_JSON_KEY}.regions' must map a name to a list of labels")
    out = {}
    for name, labels in raw.items():
        try:
            values = tuple(int(v) for v in (labels if isinstance(labels, (list, tuple)) else [labels]))
        except (TypeError, ValueError):
            raise TargetSpecError(f"{source}: region {name!r} must list integer labels, got {labels!r}") from None
        if not values or str(name).isdigit():
            raise TargetSpecError(f"{source}: region {name!r} needs a non-numeric name and at least one label")
        out[str(name)] = values
    return out


def _pairs(raw: Sequence, source: str) -> Tuple[Pair, ...]:
    if not isinstance(raw, (list, tuple)):
        raise TargetSpecError(f"{source}: '{DATASET_JSON_KEY}.lateral_pairs' must be a list of [left, right] pairs")
    pairs = []
    for entry in raw:
        if not isinstance(entry, (list, tuple)) or len(entry) != 2:
            raise TargetSpecError(f"{source}: lateral pair {entry!r} must be [left_label, right_label]")
        pairs.append((str(entry[0]), str(entry[1])))
    return tuple(pairs)


def build(table: CaseTable, has_masks: bool = True, regions: Optional[Mapping] = None,
          lateral_pairs: Sequence = (), fixed_validation: Sequence[str] = (),
          patients: Optional[Mapping] = None, source_layout: str = "",
          source: str = "dataset description") -> DatasetSpec:
    """A spec from Python values (what conversion collects), checked like one read from JSON."""
    return DatasetSpec(table=table, has_masks=bool(has_masks), regions=_regions(regions or {}, source),
                       lateral_pairs=_pairs(list(lateral_pairs), source),
                       fixed_validation=tuple(str(c) for c in fixed_validation),
                       patients={str(k): str(v) for k, v in (patients or {}).items()},
                       source_layout=str(source_layout or ""))
