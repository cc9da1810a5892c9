"""Image-level targets as data: the spec a dataset declares and the per-case table.

A dataset carries its targets in ``dataset.json`` under the key ``"mtl"``::

    "mtl": {
      "targets": [
        {"name": "subtype", "kind": "classification",
         "classes": ["subtype0", "subtype1", "subtype2"], "weight": 1.0},
        {"name": "age", "kind": "regression", "weight": 0.3, "allow_missing": true}
      ],
      "cases": {"case_000": {"subtype": "subtype1", "age": 54.0}, ...}
    }

The same information can come from a labels CSV (``case_id`` plus one column per
target) and a spec; ``TargetSpec`` and ``CaseTable`` are the one place that parses,
validates and serialises both. The whole ``mtl`` block (these two plus masks, regions,
lateral pairs, splits) is read and written by ``nnunet_mtl.dataset_spec.DatasetSpec``.
"""
from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

CLASSIFICATION = "classification"
REGRESSION = "regression"
KINDS = (CLASSIFICATION, REGRESSION)
MISSING_TOKENS = ("", "na", "nan", "none", "null", "?")


class TargetSpecError(ValueError):
    """A target spec or label table that cannot be used; the message names the culprit."""


@dataclass(frozen=True)
class Target:
    """One image-level target: a classification with ordered class names, or a regression."""
    name: str
    kind: str
    classes: tuple = ()
    weight: float = 1.0
    allow_missing: bool = False
    unit: str = ""

    def __post_init__(self):
        if not self.name or not str(self.name).replace("_", "").replace("-", "").isalnum():
            raise TargetSpecError(f"target name {self.name!r} must be alphanumeric (with _ or -)")
        if self.kind not in KINDS:
            raise TargetSpecError(f"target {self.name!r}: kind must be one of {KINDS}, got {self.kind!r}")
        if self.kind == CLASSIFICATION:
            if len(self.classes) < 2:
                raise TargetSpecError(f"target {self.name!r}: a classification needs at least 2 classes")
            if len(set(self.classes)) != len(self.classes):
                raise TargetSpecError(f"target {self.name!r}: duplicate class names in {list(self.classes)}")
        elif self.classes:
            raise TargetSpecError(f"target {self.name!r}: a regression target has no classes")
        if not (self.weight >= 0 and math.isfinite(self.weight)):
            raise TargetSpecError(f"target {self.name!r}: weight must be a finite number >= 0")

    @property
    def is_classification(self) -> bool:
        return self.kind == CLASSIFICATION

    @property
    def num_outputs(self) -> int:
        return len(self.classes) if self.is_classification else 1

    def class_index(self, value) -> int:
        """Class name (or its index given as int / digit string) -> index; raises on unknown names."""
        text = str(value).strip()
        if text in self.classes:
            return self.classes.index(text)
        if isinstance(value, (int,)) and 0 <= value < len(self.classes):
            return int(value)
        near = [c for c in self.classes if spelling_key(c) == spelling_key(text)]
        hint = f"; it differs only by case or spaces from {near[0]!r}" if near else ""
        raise TargetSpecError(f"target {self.name!r}: unknown class {text!r} (known: {list(self.classes)}){hint}")

    def parse_value(self, value):
        """Raw cell (str/number/None) -> canonical value: class name, float, or None when missing."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if isinstance(value, str) and value.strip().lower() in MISSING_TOKENS:
            return None
        if self.is_classification:
            return self.classes[self.class_index(value)]
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise TargetSpecError(f"target {self.name!r}: {value!r} is not a number") from None
        if not math.isfinite(number):
            return None
        return number

    def to_json(self) -> dict:
        out = {"name": self.name, "kind": self.kind, "weight": self.weight, "allow_missing": self.allow_missing}
        if self.is_classification:
            out["classes"] = list(self.classes)
        if self.unit:
            out["unit"] = self.unit
        return out

    @classmethod
    def from_json(cls, d: Mapping) -> "Target":
        unknown = set(d) - {"name", "kind", "classes", "weight", "allow_missing", "unit"}
        if unknown:
            raise TargetSpecError(f"target {d.get('name')!r}: unknown keys {sorted(unknown)}")
        if "name" not in d or "kind" not in d:
            raise TargetSpecError(f"target entry {dict(d)} needs 'name' and 'kind'")
        return cls(name=str(d["name"]), kind=str(d["kind"]),
                   classes=tuple(str(c) for c in d.get("classes", ())),
                   weight=float(d.get("weight", 1.0)), allow_missing=bool(d.get("allow_missing", False)),
                   unit=str(d.get("unit", "")))


@dataclass(frozen=True)
class TargetSpec:
    """The ordered list of targets a dataset carries (at least one)."""
    targets: tuple

    def __post_init__(self):
        if not self.targets:
            raise TargetSpecError("the target spec declares no targets")
        names = [t.name for t in self.targets]
        if len(set(names)) != len(names):
            raise TargetSpecError(f"duplicate target names in {names}")

    def __iter__(self):
        return iter(self.targets)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, name: str) -> Target:
        for t in self.targets:
            if t.name == name:
                return t
        raise KeyError(name)

    @property
    def names(self) -> List[str]:
        return [t.name for t in self.targets]

    @property
    def classification_targets(self) -> List[Target]:
        return [t for t in self.targets if t.is_classification]

    @property
    def regression_targets(self) -> List[Target]:
        return [t for t in self.targets if not t.is_classification]

    def to_json(self) -> list:
        return [t.to_json() for t in self.targets]

    @classmethod
    def from_json(cls, entries: Sequence[Mapping]) -> "TargetSpec":
        if not isinstance(entries, (list, tuple)):
            raise TargetSpecError("the target spec must be a list of target entries")
        return cls(tuple(Target.from_json(e) for e in entries))

    @classmethod
    def infer_from_columns(cls, rows: Sequence[Mapping[str, str]], columns: Sequence[str],
                           regression: Iterable[str] = (), source: str = "labels",
                           lines: Optional[Sequence[int]] = None) -> "TargetSpec":
        """Guess a spec from CSV columns: numeric-only columns with many values are regression
        unless they have few distinct integers; class names are sorted (numerically if numeric).
        Class names that differ only by case or spaces (``Present``/``present``) are refused, naming
        the rows' file ``lines`` (default: header on line 1, one line per row)."""
        regression = set(regression)
        targets = []
        for col in columns:
            values = [r[col].strip() for r in rows if str(r.get(col, "")).strip().lower() not in MISSING_TOKENS]
            missing = len(values) < len(rows)
            numeric = all(_is_number(v) for v in values) and values
            distinct = sorted(set(values), key=lambda v: (float(v) if numeric else 0, v))
            is_reg = col in regression or (numeric and (len(distinct) > 10 or not all(float(v).is_integer() for v in values)))
            if is_reg:
                targets.append(Target(col, REGRESSION, allow_missing=missing))
            else:
                _refuse_spelling_variants(col, rows, source, lines)
                targets.append(Target(col, CLASSIFICATION, classes=tuple(distinct), allow_missing=missing))
        return cls(tuple(targets))


def spelling_key(name: str) -> str:
    """What two spellings of one class have in common: case and spaces ignored."""
    return "".join(str(name).split()).casefold()


def _refuse_spelling_variants(column: str, rows: Sequence[Mapping[str, str]], source: str,
                              lines: Optional[Sequence[int]] = None) -> None:
    """In file order, so the line named is the one where the second spelling first appears (sorted
    class names put 'Present' before 'present' wherever they are in the file)."""
    first: Dict[str, tuple] = {}
    for line, r in zip(lines or range(2, len(rows) + 2), rows):
        name = str(r.get(column, "")).strip()
        if name.lower() in MISSING_TOKENS:
            continue
        other, other_line = first.setdefault(spelling_key(name), (name, line))
        if other != name:
            raise TargetSpecError(f"{source}: column {column!r} spells one class two ways, {other!r} (line "
                                  f"{other_line}) and {name!r} (line {line}); they differ only by case or spaces: "
                                  f"use one spelling, or declare the classes in a spec (--spec_json)")


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


@dataclass
class CaseTable:
    """Per-case values of every target (canonical: class name, float, or None when missing)."""
    spec: TargetSpec
    values: Dict[str, Dict[str, object]] = field(default_factory=dict)

    @property
    def case_ids(self) -> List[str]:
        return sorted(self.values)

    def value(self, case_id: str, target: str):
        return self.values[case_id].get(target)

    @classmethod
    def from_mapping(cls, spec: TargetSpec, cases: Mapping[str, Mapping], source: str = "labels") -> "CaseTable":
        table = {}
        for case_id, row in cases.items():
            unknown = set(row) - set(spec.names)
            if unknown:
                raise TargetSpecError(f"{source}: case {case_id!r} has values for undeclared targets {sorted(unknown)}")
            parsed = {}
            for t in spec:
                try:
                    parsed[t.name] = t.parse_value(row.get(t.name))
                except TargetSpecError as e:
                    raise TargetSpecError(f"{source}: case {case_id!r}: {e}") from None
            table[str(case_id)] = parsed
        return cls(spec, table)

    def validate(self, case_ids: Iterable[str], source: str = "labels") -> None:
        """Every case has a row, no row is for an unknown case, required values are present."""
        case_ids = set(case_ids)
        extra = sorted(set(self.values) - case_ids)
        if extra:
            raise TargetSpecError(f"{source}: label for case {extra[0]!r} which does not exist among the images"
                                  + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else ""))
        for case_id in sorted(case_ids):
            if case_id not in self.values:
                raise TargetSpecError(f"{source}: case {case_id!r} has no label row")
            for t in self.spec:
                if self.values[case_id].get(t.name) is None and not t.allow_missing:
                    raise TargetSpecError(f"{source}: case {case_id!r} has no value for target {t.name!r} "
                                          f"(declare \"allow_missing\": true if that is intended)")

    def class_counts(self, target: str, case_ids: Optional[Iterable[str]] = None) -> List[int]:
        """Number of cases per class of a classification target, over case_ids (default: all)."""
        t = self.spec[target]
        counts = [0] * len(t.classes)
        for c in (self.case_ids if case_ids is None else case_ids):
            v = self.values[c].get(target)
            if v is not None:
                counts[t.classes.index(v)] += 1
        return counts

    def to_json(self) -> dict:
        return {c: dict(self.values[c]) for c in self.case_ids}


def read_labels_csv(path: str, spec: Optional[TargetSpec] = None, id_column: str = "case_id",
                    regression: Iterable[str] = (), ignore_columns: Iterable[str] = ()) -> CaseTable:
    """Read a labels CSV (``case_id`` + one column per target); infer the spec when none is given."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows, lines = [], []  # lines: each row's line in the file as an editor counts (header = 1)
            for row in reader:
                rows.append(row)
                lines.append(reader.line_num)
            columns = list(reader.fieldnames or [])
    except FileNotFoundError:
        raise TargetSpecError(f"{path}: labels CSV not found") from None
    if id_column not in columns:
        raise TargetSpecError(f"{path}: no '{id_column}' column (columns: {columns})")
    ignore = set(ignore_columns) | {id_column}
    if spec is None:
        spec = TargetSpec.infer_from_columns(rows, [c for c in columns if c not in ignore], regression, source=path,
                                             lines=lines)
    missing_cols = [n for n in spec.names if n not in columns]
    if missing_cols:
        raise TargetSpecError(f"{path}: no column for target(s) {missing_cols}")
    cases = {}
    for i, r in zip(lines, rows):
        cid = str(r[id_column]).strip()
        if not cid:
            raise TargetSpecError(f"{path}: line {i} has an empty {id_column}")
        if cid in cases:
            raise TargetSpecError(f"{path}: case {cid!r} appears twice (line {i})")
        cases[cid] = {n: r[n] for n in spec.names}
    return CaseTable.from_mapping(spec, cases, source=path)


def load_spec_file(path: str) -> TargetSpec:
    """A spec JSON file: either a list of targets or {"targets": [...]}."""
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise TargetSpecError(f"{path}: cannot read target spec ({e})") from None
    return TargetSpec.from_json(data["targets"] if isinstance(data, dict) else data)
