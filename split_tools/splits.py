"""Cross-validation splits for nnU-Net that respect the image-level targets.

nnU-Net's default split is a plain random 5-fold; with a rare class a fold can miss it, and
with several images per patient the same patient can sit on both sides. These splits are
computed from the ``mtl`` block of ``dataset.json`` (raw or preprocessed: planning copies
it unchanged) and written as nnU-Net's ``splits_final.json``: a list of {"train", "val"}.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from nnunet_mtl.io_utils import atomic_write_json, read_json
from nnunet_mtl.dataset_spec import DatasetSpec
from nnunet_mtl.targets import CaseTable, TargetSpecError

log = logging.getLogger(__name__)

MODES = ("stratified", "grouped", "fixed", "random")
SPLITS_FILE = "splits_final.json"
TEST_FILE = "splits_test.json"
DEFAULT_SEED = 12345
MISSING = "<missing>"


class SplitError(ValueError):
    """Splits that cannot be made or written; the one-line message names the file or case."""


class Splits(list):
    """nnU-Net's list of {"train": [...], "val": [...]}; ``test`` holds cases kept out of every fold."""

    def __init__(self, folds=(), test: Sequence[str] = ()):
        super().__init__(folds)
        self.test = list(test)


# --------------------------------------------------------------------------------------------- input
def load_dataset_json(path: str) -> dict:
    """A dataset.json file, or a (raw or preprocessed) dataset folder containing one."""
    if os.path.isdir(path):
        path = os.path.join(path, "dataset.json")
    try:
        return read_json(path)
    except (OSError, json.JSONDecodeError) as e:
        raise SplitError(f"{path}: cannot read dataset.json ({e})") from None


def _description(dataset_json: Mapping, source: str) -> DatasetSpec:
    try:
        return DatasetSpec.from_dataset_json(dataset_json, source=source)
    except TargetSpecError as e:
        raise SplitError(str(e)) from None


def _pick_target(table: CaseTable, target: Optional[str], source: str) -> Optional[str]:
    """The classification target to stratify on: the named one, else the first (None if there is none)."""
    if target is None:
        cls = table.spec.classification_targets
        return cls[0].name if cls else None
    if target not in table.spec.names:
        raise SplitError(f"{source}: no target {target!r} (targets: {table.spec.names})")
    if not table.spec[target].is_classification:
        raise SplitError(f"{source}: target {target!r} is a regression; stratify on a classification target")
    return target


def _strata(table: CaseTable, cases: Sequence[str], target: Optional[str]) -> List[str]:
    if target is None:
        return ["all"] * len(cases)
    return [str(table.value(c, target)) if table.value(c, target) is not None else MISSING for c in cases]


def _patients(description: DatasetSpec, cases: Sequence[str], source: str) -> List[str]:
    patients = description.patients
    if not patients:
        raise SplitError(f"{source}: grouped splits need a patient per case (mtl block 'patients'); "
                         f"convert with a patient column")
    missing = [c for c in cases if c not in patients]
    if missing:
        raise SplitError(f"{source}: case {missing[0]!r} has no patient id in the mtl block")
    return [str(patients[c]) for c in cases]


# --------------------------------------------------------------------------------------------- split
def _hold_out(cases: Sequence[str], strata: Sequence[str], groups: Optional[Sequence[str]], fraction: float,
              seed: int) -> List[str]:
    """About ``fraction`` of the cases, per stratum, whole patients only when ``groups`` is given."""
    if not 0 <= fraction < 1:
        raise SplitError(f"test_fraction must be in [0, 1), got {fraction}")
    if fraction == 0:
        return []
    rng = np.random.default_rng(seed)
    units: Dict[str, List[str]] = {}
    for c, g in zip(cases, groups if groups is not None else cases):
        units.setdefault(g, []).append(c)
    strat_of = dict(zip(cases, strata))
    by_stratum: Dict[str, List[str]] = {}
    for u, members in sorted(units.items()):
        majority = Counter(strat_of[m] for m in members).most_common(1)[0][0]
        by_stratum.setdefault(majority, []).append(u)
    chosen = []
    for s in sorted(by_stratum):
        us = by_stratum[s]
        k = int(round(fraction * len(us)))
        chosen.extend(us[i] for i in rng.permutation(len(us))[:k])
    if not chosen:
        chosen = [sorted(units)[int(rng.integers(len(units)))]]
    return sorted(c for u in chosen for c in units[u])


def _kfold(cases: Sequence[str], strata: Sequence[str], groups: Optional[Sequence[str]], n_folds: int,
           seed: int, stratify: bool, source: str) -> List[dict]:
    from sklearn.model_selection import GroupKFold, KFold, StratifiedGroupKFold, StratifiedKFold
    n_units = len(set(groups)) if groups is not None else len(cases)
    if n_folds < 2 or n_folds > n_units:
        what = "patients" if groups is not None else "cases"
        raise SplitError(f"{source}: cannot make {n_folds} folds from {n_units} {what} (folds must be at least 2 "
                         f"and at most the number of {what})")
    x = np.zeros(len(cases))
    if groups is not None and stratify:
        splitter = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split(x, strata, groups)
    elif groups is not None:
        splitter = GroupKFold(n_folds).split(x, strata, _shuffled_groups(groups, seed))
    elif stratify:
        smallest = min(Counter(strata).values())
        if smallest < n_folds:
            log.warning("%s: smallest class has %d case(s) < %d folds; some folds will miss it",
                        source, smallest, n_folds)
        splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(x, strata)
    else:
        splitter = KFold(n_folds, shuffle=True, random_state=seed).split(x)
    return [{"train": sorted(cases[i] for i in tr), "val": sorted(cases[i] for i in va)} for tr, va in splitter]


def _shuffled_groups(groups: Sequence[str], seed: int) -> List[str]:
    """GroupKFold has no shuffle: rename the groups by a seeded permutation so the seed still matters."""
    names = sorted(set(groups))
    perm = np.random.default_rng(seed).permutation(len(names))
    rename = {n: f"{int(p):08d}" for n, p in zip(names, perm)}
    return [rename[g] for g in groups]


def make_splits(dataset_json_path: str, mode: str = "stratified", n_folds: int = 5, target: Optional[str] = None,
                seed: int = DEFAULT_SEED, test_fraction: float = 0.0, verbose: bool = True) -> Splits:
    """Folds for nnU-Net from a dataset.json (file or folder).

    mode: 'stratified' (class proportions kept per fold), 'grouped' (no patient on both sides, stratified
    when there is a classification target), 'fixed' (one split: validate on the layout's validation cases),
    'random'. ``test_fraction`` keeps cases out of every fold (``Splits.test``). Deterministic for a seed."""
    if mode not in MODES:
        raise SplitError(f"unknown split mode {mode!r} (use one of {list(MODES)})")
    dj = load_dataset_json(dataset_json_path)
    source = dataset_json_path
    description = _description(dj, source)
    table = description.table
    target = _pick_target(table, target, source)
    if mode == "stratified" and target is None:
        log.warning("%s: no classification target to stratify on; using random folds", source)
    cases = table.case_ids
    strata = _strata(table, cases, target)
    groups = _patients(description, cases, source) if mode == "grouped" else None
    fixed = set(_fixed_validation(description, cases, source)) if mode == "fixed" else set()
    pool = [i for i, c in enumerate(cases) if c not in fixed]
    test = set(_hold_out(_take(cases, pool), _take(strata, pool), _take(groups, pool), test_fraction, seed))
    rest = [i for i in pool if cases[i] not in test]
    if mode == "fixed":
        folds = [{"train": _take(cases, rest), "val": sorted(fixed)}]
    else:
        folds = _kfold(_take(cases, rest), _take(strata, rest), _take(groups, rest), n_folds, seed,
                       stratify=target is not None and mode != "random", source=source)
    splits = Splits(folds, sorted(test))
    if verbose and target is not None:
        print(format_class_counts(fold_class_counts(splits, table, target), table.spec[target].classes))
    return splits


def _take(seq: Optional[Sequence], idx: Sequence[int]) -> Optional[list]:
    return [seq[i] for i in idx] if seq is not None else None


def _fixed_validation(description: DatasetSpec, cases: Sequence[str], source: str) -> List[str]:
    fixed = list(description.fixed_validation)
    if not fixed:
        raise SplitError(f"{source}: no 'fixed_validation' cases in the mtl block "
                         f"(only layouts with a validation/ folder have them)")
    unknown = sorted(set(fixed) - set(cases))
    if unknown:
        raise SplitError(f"{source}: fixed validation case {unknown[0]!r} is not a training case")
    if len(set(fixed)) == len(cases):
        raise SplitError(f"{source}: every case is a fixed validation case; nothing is left to train on")
    return sorted(set(fixed))


# ------------------------------------------------------------------------------------------- report
def fold_class_counts(splits: Sequence[Mapping], table: CaseTable, target: str) -> List[dict]:
    """Per fold: {"fold", "train": [count per class], "val": [...]}, plus a final "test" row if held out."""
    rows = [{"fold": i, "train": table.class_counts(target, f["train"]), "val": table.class_counts(target, f["val"])}
            for i, f in enumerate(splits)]
    test = getattr(splits, "test", [])
    if test:
        rows.append({"fold": "test", "train": [], "val": table.class_counts(target, test)})
    return rows


def format_class_counts(rows: Sequence[Mapping], classes: Sequence[str]) -> str:
    """A small text table: one line per fold, train/val counts per class."""
    width = max([len(c) for c in classes] + [9])
    head = "fold  " + "".join(f"{c:>{width}}" for c in classes) + "   (train / val)"
    lines = [head]
    for r in rows:
        cells = [f"{(str(t) + ' / ') if r['train'] else ''}{v}" for t, v in
                 zip(r["train"] or [None] * len(r["val"]), r["val"])]
        lines.append(f"{str(r['fold']):<6}" + "".join(f"{c:>{width}}" for c in cells))
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------- write
def splits_path(path: str) -> str:
    """A folder (e.g. nnUNet_preprocessed/DatasetXXX) -> its splits_final.json; a .json path as is."""
    return path if path.endswith(".json") else os.path.join(path, SPLITS_FILE)


def write_splits(splits: Sequence[Mapping], path: str, overwrite: bool = False) -> str:
    """Write splits_final.json atomically (and the held-out test list beside it); an identical file is
    left alone, a different one is refused unless ``overwrite``. Returns the path written."""
    path = splits_path(path)
    folds = [{"train": list(f["train"]), "val": list(f["val"])} for f in splits]
    test = list(getattr(splits, "test", []))
    test_path = os.path.join(os.path.dirname(os.path.abspath(path)), TEST_FILE)
    targets = [(path, folds)] + ([(test_path, {"test": test})] if test else [])
    todo = []
    for p, content in targets:
        if _same_json(p, content):
            continue
        if os.path.isfile(p) and not overwrite:
            raise SplitError(f"{p}: a different split file already exists; pass overwrite=True (--overwrite) "
                             f"to replace it")
        todo.append((p, content))
    for p, content in todo:
        atomic_write_json(p, content)
    return path


def _same_json(path: str, content) -> bool:
    try:
        return os.path.isfile(path) and read_json(path) == content
    except (OSError, json.JSONDecodeError):
        return False


def read_splits(path: str) -> List[dict]:
    """Load and check a splits_final.json the way nnU-Net uses it (list of dicts with train/val)."""
    path = splits_path(path)
    data = read_json(path)
    if not isinstance(data, list) or not all(isinstance(f, dict) and {"train", "val"} <= set(f) for f in data):
        raise SplitError(f"{path}: not an nnU-Net splits file (expected a list of {{'train': [...], 'val': [...]}})")
    return data
