"""One dataset description for every layout: structure names, regions, lateral pairs, channels, targets.

A JSON file (``--description``) or short flags say what the mask values and channels mean::

    {
      "labels": {"left_lung": 1, "right_lung": 2, "opacity": 3},   # or {"1": "left_lung", ...} or a list
      "regions": {"lungs": ["left_lung", "right_lung"]},             # names or values
      "lateral_pairs": [["left_lung", "right_lung"]],                # [] turns pairing off
      "channel_names": {"0": "CT"},                                  # or a list
      "targets": [{"name": "finding", "kind": "classification", "classes": ["no", "yes"]}]
    }

Conversion writes the names into nnU-Net's ``labels`` / ``channel_names`` (so evaluation
reports Dice per named structure) and the rest into the ``mtl`` block through
``nnunet_mtl.dataset_spec``. Without ``lateral_pairs``, names that say left/right are paired
by ``nnunet_mtl.conversion.lateral_pairs.detect_lateral_pairs``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from typing import Dict, List, Mapping, Optional, Tuple

from nnunet_mtl.conversion.masks import MAX_LABEL, ConversionError
from nnunet_mtl.conversion.lateral_pairs import LateralPairError, detect_lateral_pairs
from nnunet_mtl.targets import TargetSpec, TargetSpecError

KEYS = ("labels", "regions", "lateral_pairs", "channel_names", "targets")
Pair = Tuple[str, str]


@dataclass(frozen=True)
class DatasetDescription:
    """What the user says about a dataset; None means "not said" (the layout's default applies)."""
    labels: Optional[Mapping[str, int]] = None            # structure name -> mask value, background included
    regions: Optional[Mapping[str, Tuple[object, ...]]] = None  # region name -> label names or values
    lateral_pairs: Optional[Tuple[Pair, ...]] = None      # None: detected from label names
    channel_names: Optional[Mapping[str, str]] = None
    targets: Optional[TargetSpec] = None
    source: str = "dataset description"

    def updated(self, other: "DatasetDescription") -> "DatasetDescription":
        """This description with every entry ``other`` says replacing ours (flags over a file)."""
        given = {f.name: getattr(other, f.name) for f in fields(other)
                 if f.name != "source" and getattr(other, f.name) is not None}
        return replace(self, **given)

    # ------------------------------------------------------------------ resolution at conversion
    def region_values(self, labels: Mapping[str, int]) -> Dict[str, List[int]]:
        """Regions with label names replaced by their values (checked against ``labels``)."""
        out = {}
        for region, members in (self.regions or {}).items():
            values = []
            for m in members:
                if isinstance(m, int) or str(m).isdigit():
                    value = int(m)
                elif m in labels:
                    value = int(labels[m])
                else:
                    raise ConversionError(f"{self.source}: region {region!r} names label {m!r}, which is not "
                                          f"declared (labels: {sorted(labels)})")
                if value not in labels.values() or value == 0:
                    raise ConversionError(f"{self.source}: region {region!r} uses label value {value}, which is "
                                          f"not a declared foreground label")
                values.append(value)
            out[region] = sorted(set(values))
        return out

    def pairs(self, labels: Mapping[str, int]) -> Tuple[List[Pair], str]:
        """(lateral pairs, note): the declared ones (names checked), else those the names suggest."""
        if self.lateral_pairs is not None:
            for pair in self.lateral_pairs:
                for name in pair:
                    if name not in labels:
                        raise ConversionError(f"{self.source}: lateral pair {list(pair)} names label {name!r}, "
                                              f"which is not declared (labels: {sorted(labels)})")
            return list(self.lateral_pairs), ""
        detected = detect_lateral_pairs(labels)
        if not detected:
            return [], ""
        shown = ", ".join(f"{a}<->{b}" for a, b in detected)
        return detected, (f"lateral label pairs from the label names: {shown} (declare \"lateral_pairs\": [] "
                          f"in the description to turn this off)")


# ------------------------------------------------------------------------------ parsing values
def parse_labels(raw, source: str) -> Dict[str, int]:
    """{name: value} with background 0, from {name: value}, {value: name}, a list of names (1, 2, ...)
    or flag items ``1=left_lung`` / ``left_lung``; values must run 0..N without gaps (nnU-Net)."""
    pairs: List[Tuple[str, int]] = []
    try:
        if isinstance(raw, Mapping):
            for k, v in raw.items():
                if str(k).strip().isdigit():
                    pairs.append((str(v).strip(), int(k)))
                else:
                    pairs.append((str(k).strip(), int(v)))
        else:
            for i, item in enumerate(raw, start=1):
                value, sep, name = str(item).partition("=")
                pairs.append((name.strip(), int(value)) if sep else (value.strip(), i))
    except (TypeError, ValueError):
        raise ConversionError(f"{source}: labels must map names to integer mask values "
                              f"(e.g. 1=left_lung 2=right_lung), got {raw!r}") from None
    labels = {"background": 0}
    for name, value in pairs:
        if not name or name.isdigit():
            raise ConversionError(f"{source}: label value {value} needs a non-numeric name")
        if name in labels and labels[name] != value:
            raise ConversionError(f"{source}: label name {name!r} is used for values {labels[name]} and {value}")
        if value == 0 and name != "background":  # nnU-Net's labels need background = 0
            raise ConversionError(f"{source}: label {name}={value}: mask value 0 is the background and cannot be "
                                  f"named; the structures are numbered from 1")
        if value in labels.values() and labels.get(name) != value:
            raise ConversionError(f"{source}: mask value {value} is named twice")
        if not 0 <= value <= MAX_LABEL or (value == 0) != (name == "background"):
            raise ConversionError(f"{source}: label {name}={value}: values run from 1 to {MAX_LABEL} "
                                  f"(0 is the background)")
        labels[name] = value
    missing = sorted(set(range(max(labels.values()) + 1)) - set(labels.values()))
    if missing:
        raise ConversionError(f"{source}: mask value {missing[0]} has no name; nnU-Net needs consecutive "
                              f"labels 0..{max(labels.values())}")
    return dict(sorted(labels.items(), key=lambda kv: kv[1]))


def parse_regions(raw, source: str) -> Dict[str, Tuple[object, ...]]:
    """{region: (label names or values)} from a mapping or flag items ``lungs=1,2`` / ``lungs=left_lung,right_lung``."""
    if not isinstance(raw, Mapping):
        items = {}
        for item in raw:
            name, sep, members = str(item).partition("=")
            if not sep or not name.strip() or not members.strip():
                raise ConversionError(f"{source}: region {item!r} must look like lungs=1,2")
            items[name.strip()] = [m.strip() for m in members.split(",") if m.strip()]
        raw = items
    out = {}
    for name, members in raw.items():
        members = members if isinstance(members, (list, tuple)) else [members]
        if not members or str(name).isdigit():
            raise ConversionError(f"{source}: region {name!r} needs a non-numeric name and at least one label")
        out[str(name)] = tuple(int(m) if isinstance(m, int) or str(m).isdigit() else str(m) for m in members)
    return out


def parse_pairs(raw, source: str) -> Tuple[Pair, ...]:
    """[[left, right], ...] or flag items ``left_lung:right_lung``."""
    out = []
    for item in raw:
        parts = str(item).split(":") if isinstance(item, str) else list(item)
        if len(parts) != 2 or not all(str(p).strip() for p in parts):
            raise ConversionError(f"{source}: lateral pair {item!r} must name two labels (left_lung:right_lung)")
        left, right = str(parts[0]).strip(), str(parts[1]).strip()
        if left == right:  # would be stored, and a mirror would "swap" the structure with itself
            raise LateralPairError(f"{source}: lateral pair {item!r} names {left!r} on both sides; a pair is two "
                                   f"different labels (left_lung:right_lung)")
        out.append((left, right))
    return tuple(out)


def parse_channel_names(raw, source: str) -> Dict[str, str]:
    """{"0": name, ...} from a mapping, a list, or flag items ``0=T1`` / ``T1``."""
    if isinstance(raw, Mapping):
        out = {str(k): str(v) for k, v in raw.items()}
    else:
        out = {}
        for i, item in enumerate(raw):
            index, sep, name = str(item).partition("=")
            out[index.strip() if sep else str(i)] = (name if sep else index).strip()
    if sorted(out, key=lambda k: int(k) if k.isdigit() else -1) != [str(i) for i in range(len(out))]:
        raise ConversionError(f"{source}: channel names must be numbered 0..{len(out) - 1}, got {sorted(out)}")
    return out


def description_from_json(data: Mapping, source: str) -> DatasetDescription:
    if not isinstance(data, Mapping):
        raise ConversionError(f"{source}: a dataset description is a JSON object with keys {list(KEYS)}")
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        raise ConversionError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
    parsers = {"labels": parse_labels, "regions": parse_regions, "lateral_pairs": parse_pairs,
               "channel_names": parse_channel_names, "targets": _parse_targets}
    return DatasetDescription(source=source, **{key: parse(data[key], source) for key, parse in parsers.items()
                                                if key in data})


def _parse_targets(raw, source: str) -> TargetSpec:
    try:
        return TargetSpec.from_json(raw)
    except TargetSpecError as e:
        raise ConversionError(f"{source}: {e}") from None


def load_description(path: str) -> DatasetDescription:
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ConversionError(f"{path}: cannot read dataset description ({e})") from None
    return description_from_json(data, path)


# --------------------------------------------------------------------------------- command line
def add_description_arguments(group) -> None:
    """The description flags, on an argparse parser or argument group."""
    group.add_argument("--description", help="dataset description JSON: labels, regions, lateral_pairs, "
                                             "channel_names, targets (flags below override its entries)")
    group.add_argument("--label_names", nargs="+", metavar="VALUE=NAME",
                       help="names of the mask values, e.g. 1=left_lung 2=right_lung 3=opacity")
    group.add_argument("--regions", nargs="+", metavar="NAME=LABELS",
                       help="named unions of labels, scored like labels, e.g. lungs=1,2 or lungs=left_lung,right_lung")
    group.add_argument("--lateral_pairs", nargs="+", metavar="LEFT:RIGHT",
                       help="left/right label pairs, e.g. left_lung:right_lung (default: paired from the names)")
    group.add_argument("--channel_names", nargs="+", metavar="NAME",
                       help="one name per input channel (nnU-Net picks the normalisation by name, e.g. CT)")
    group.add_argument("--grey", action="store_true",
                       help="convert colour 2D images to one grey (luma) channel instead of three (R, G, B)")


def description_from_args(args) -> Optional[DatasetDescription]:
    """The description the flags give (file first, flags over it); None when no flag was used."""
    base = load_description(args.description) if getattr(args, "description", None) else None
    source = "command line"
    for item in getattr(args, "label_names", None) or ():
        # parse_labels numbers bare names 1, 2, ... (description lists); on the command line a bare name is
        # a typo that would otherwise surface later as an undeclared mask value of some case
        value, sep, name = str(item).partition("=")
        if not sep or not value.strip().lstrip("-").isdigit() or not name.strip():
            raise ConversionError(f"--label_names {item}: expected VALUE=NAME, e.g. 1=liver")
    flags = DatasetDescription(
        labels=parse_labels(args.label_names, source) if getattr(args, "label_names", None) else None,
        regions=parse_regions(args.regions, source) if getattr(args, "regions", None) else None,
        lateral_pairs=parse_pairs(args.lateral_pairs, source) if getattr(args, "lateral_pairs", None) else None,
        channel_names=parse_channel_names(args.channel_names, source) if getattr(args, "channel_names", None) else None,
        source=source)
    if base is None:
        return flags if flags != DatasetDescription(source=source) else None
    return base.updated(flags)
