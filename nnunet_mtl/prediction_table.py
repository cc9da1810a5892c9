"""The per-case predictions table (``predictions.csv`` / ``predictions.json``): one row per case.

Columns: ``case_id``; per classification target ``T``: ``T`` (predicted class name) and
``T_prob_<class>`` for every class; per regression target ``T``: ``T`` in original units; when
there is a classification target, ``probabilities_calibrated`` (``yes``: the probabilities went
through the folds' temperatures, ``calibration/``; ``no``: raw softmax). A table without that
column (older runs) reads as not calibrated.

Review columns (split conformal, ``calibration/conformal.py``): per classification target ``T_set``
(the classes in the prediction set, joined with ``|``), per regression target ``T_low`` and ``T_high``,
then ``conformal_coverage`` (the coverage asked for) and ``needs_review`` (``yes``: a set with more
or fewer than one class, or an interval wider than the user's tolerance). They are always written,
and left empty when the model has no ``conformal.json`` (older model folders, ``--no_calibration``);
tables without them (older runs) read as having none. The predictor writes the table, evaluation and
the notebook read it; both go through here.
"""
from __future__ import annotations

import csv
import math
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from nnunet_mtl import case_checks  # optional columns seg_quality(_flag), ood_score/ood_flag; tables without read
from nnunet_mtl.io_utils import atomic_write_csv, atomic_write_json
from nnunet_mtl.targets import CLASSIFICATION, REGRESSION, Target, TargetSpec, TargetSpecError

CASE_COLUMN = "case_id"
CALIBRATED_COLUMN = "probabilities_calibrated"
YES, NO = "yes", "no"
_PROB = "_prob_"
SET_SEPARATOR = "|"
COVERAGE_COLUMN = "conformal_coverage"
REVIEW_COLUMN = "needs_review"


def prob_column(target: str, class_name: str) -> str:
    return f"{target}{_PROB}{class_name}"


def set_column(target: str) -> str:
    return f"{target}_set"


def interval_columns(target: str) -> tuple:
    return f"{target}_low", f"{target}_high"


def review_columns(spec: TargetSpec) -> List[str]:
    """The conformal columns of a table for ``spec`` (empty list for a spec without targets)."""
    cols = []
    for t in spec:
        cols.extend([set_column(t.name)] if t.is_classification else interval_columns(t.name))
    return cols + [COVERAGE_COLUMN, REVIEW_COLUMN] if cols else []


FLAG_COLUMNS = (REVIEW_COLUMN, case_checks.SEG_QUALITY_FLAG, case_checks.OOD_FLAG)  # 'yes': look at this case


def review_cells(row: Mapping, spec: TargetSpec) -> Dict[str, str]:
    """The review columns a row (as read: text) fills, in table order: the conformal ones, then the checks'
    (``seg_quality``, ``ood_score`` and their flags). A column the table lacks (older runs) or an empty cell is
    left out, so ``{}`` means: nothing to show."""
    cols = review_columns(spec) + list(case_checks.COLUMNS)
    return {c: str(row[c]).strip() for c in cols if str(row.get(c) or "").strip()}


def flags(row: Mapping) -> List[str]:
    """The flag columns (``FLAG_COLUMNS``) that say yes in this row; [] for an unflagged row or an older table."""
    return [c for c in FLAG_COLUMNS if str(row.get(c) or "").strip().lower() == YES]


def _review_column_names(header: Sequence[str]) -> set:
    """Header columns that are conformal columns of some target in it (not targets themselves)."""
    names = set(header)
    out = {c for c in (COVERAGE_COLUMN, REVIEW_COLUMN) if c in names}
    for c in header:
        for suffix in ("_set", "_low", "_high"):
            if c.endswith(suffix) and c[:-len(suffix)] in names:
                out.add(c)
    return out


def spec_from_header(header: Sequence[str], source: str = "predictions table") -> TargetSpec:
    """The spec a table header implies: ``T`` with ``T_prob_<class>`` columns is a classification
    (classes in column order, i.e. the model's order), a lone ``T`` is a regression."""
    if CASE_COLUMN not in header:
        raise TargetSpecError(f"{source}: no '{CASE_COLUMN}' column")
    review = _review_column_names(header)
    names = [c for c in header if c not in (CASE_COLUMN, CALIBRATED_COLUMN, *case_checks.COLUMNS)
             and c not in review]
    prob_cols = {c for c in names for t in names if c.startswith(prob_column(t, ""))}
    targets = []
    try:
        for t in (c for c in names if c not in prob_cols):
            prefix = prob_column(t, "")
            classes = tuple(c[len(prefix):] for c in names if c.startswith(prefix))
            targets.append(Target(t, CLASSIFICATION, classes=classes) if classes else Target(t, REGRESSION))
        return TargetSpec(tuple(targets))
    except TargetSpecError as e:
        raise TargetSpecError(f"{source}: {e}") from None


def read_header_spec(csv_path: str) -> TargetSpec:
    """``spec_from_header`` of a predictions CSV file."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        header = next(csv.reader(f), [])
    return spec_from_header(header, csv_path)


def columns(spec: TargetSpec) -> List[str]:
    cols = [CASE_COLUMN]
    for t in spec:
        cols.append(t.name)
        if t.is_classification:
            cols.extend(prob_column(t.name, c) for c in t.classes)
    if spec.classification_targets:
        cols.append(CALIBRATED_COLUMN)
    return cols + review_columns(spec)


def make_row(spec: TargetSpec, case_id: str, outputs: Mapping[str, np.ndarray], calibrated: bool = False,
             review: Optional[Mapping[str, str]] = None) -> dict:
    """outputs: target -> class probabilities (classification) or a value in original units;
    ``calibrated``: the probabilities are temperature-scaled (the ``probabilities_calibrated`` column);
    ``review``: the conformal columns (``calibration.conformal_store.EnsembleConformal.review``), empty without."""
    review = review or {}
    row = {CASE_COLUMN: case_id, **{c: review.get(c, "") for c in review_columns(spec)}}
    if spec.classification_targets:
        row[CALIBRATED_COLUMN] = YES if calibrated else NO
    for t in spec:
        value = np.asarray(outputs[t.name], dtype=np.float64).reshape(-1)
        if t.is_classification:
            row[t.name] = t.classes[int(np.argmax(value))]
            for c, p in zip(t.classes, value):
                row[prob_column(t.name, c)] = float(p)
        else:
            row[t.name] = float(value[0])
    row.update(case_checks.columns_of(outputs))  # seg_quality, ood_score: when measured
    return row


def write(csv_path: str, json_path: str, spec: TargetSpec, rows: Sequence[Mapping]) -> None:
    rows = sorted(rows, key=lambda r: r[CASE_COLUMN])
    atomic_write_csv(csv_path, rows, columns(spec) + case_checks.present(rows))
    if json_path:
        atomic_write_json(json_path, {"targets": spec.to_json(), "cases": list(rows)})


def read(csv_path: str, spec: TargetSpec) -> Dict[str, dict]:
    """case_id -> {target: predicted value, 'probs': {target: np.ndarray}, 'calibrated': bool, 'review': {conformal
    column: text}}; checks the columns, that every case has one row and that every probability (and regression
    value, empty = NaN) is a number. The conformal columns are optional (older tables have none)."""
    with open(csv_path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        optional = {CALIBRATED_COLUMN, *review_columns(spec)}  # older tables have none of these
        missing = [c for c in columns(spec) if c not in header and c not in optional]
        if missing:
            raise TargetSpecError(f"{csv_path}: missing column(s) {missing}")
        out, lines = {}, {}
        for r in reader:
            cid = (r[CASE_COLUMN] or "").strip()
            if not cid:
                raise TargetSpecError(f"{csv_path}: line {reader.line_num}: empty {CASE_COLUMN}")
            if cid in out:
                raise TargetSpecError(f"{csv_path}: case {cid!r} has two rows (lines {lines[cid]} and "
                                      f"{reader.line_num})")
            lines[cid] = reader.line_num
            entry = {"probs": {}, "calibrated": _calibrated(csv_path, cid, r),
                     "review": {c: (r.get(c) or "").strip() for c in review_columns(spec) if c in header},
                     "checks": {c: r[c] for c in case_checks.COLUMNS if r.get(c)}}  # optional columns
            for t in spec:
                if t.is_classification:
                    if r[t.name] not in t.classes:
                        raise TargetSpecError(f"{csv_path}: case {cid!r}: unknown class {r[t.name]!r} for {t.name!r}")
                    entry[t.name] = r[t.name]
                    entry["probs"][t.name] = np.array([_number(csv_path, cid, r, prob_column(t.name, c))
                                                       for c in t.classes])
                else:
                    entry[t.name] = _number(csv_path, cid, r, t.name, empty=math.nan)
            out[cid] = entry
    return out


def _calibrated(csv_path: str, cid: str, row: Mapping[str, str]) -> bool:
    text = (row.get(CALIBRATED_COLUMN) or NO).strip().lower()
    if text not in (YES, NO):
        raise TargetSpecError(f"{csv_path}: case {cid!r}: {CALIBRATED_COLUMN} is {text!r}, not {YES!r} or {NO!r}")
    return text == YES


def _number(csv_path: str, cid: str, row: Mapping[str, str], column: str, empty=None) -> float:
    text = (row.get(column) or "").strip()
    if not text and empty is not None:
        return empty
    try:
        return float(text)
    except ValueError:
        raise TargetSpecError(f"{csv_path}: case {cid!r}: {column} is not a number ({text!r})") from None
