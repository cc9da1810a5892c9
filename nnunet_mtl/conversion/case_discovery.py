"""Finding cases on disk: image files (or DICOM-series folders) per case, their channels and masks.

Shared by the layouts: a folder is scanned once into ``{stem: path}``; ``CASE_0000``-style names
are grouped into channels; masks are matched by case id. Notes and spreadsheets next to the
images are skipped; any other file that no reader understands is an error naming it.
"""
from __future__ import annotations

import csv
import logging
import os
import re
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from nnunet_mtl.conversion import dicom_series
from nnunet_mtl.conversion.image_readers import SUPPORTED, file_stem
from nnunet_mtl.conversion.masks import ConversionError

log = logging.getLogger(__name__)

CHANNEL_RE = re.compile(r"^(.+)_(\d{4})$")
NOT_IMAGES = (".csv", ".tsv", ".txt", ".md", ".json", ".xlsx", ".xls", ".log", ".yaml", ".yml", ".pdf",
              ".ini", ".db")


def first_dir(root: str, names: Sequence[str]) -> Optional[str]:
    """The first of ``names`` that is a folder inside ``root``."""
    for n in names:
        if os.path.isdir(os.path.join(root, n)):
            return os.path.join(root, n)
    return None


def scan_folder(folder: str) -> Dict[str, str]:
    """{stem: path} of the supported images (or DICOM-series subfolders) directly in ``folder``."""
    if not os.path.isdir(folder):
        raise ConversionError(f"{folder}: folder not found")
    names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
    return index_images([os.path.join(folder, n) for n in names], folder)[0]


def index_images(paths: Sequence[str], folder: Optional[str] = None) -> Tuple[Dict[str, str], List[str]]:
    """({stem: path}, skipped side files) for image files and DICOM-series folders.

    The one rule for what may sit next to images: notes and spreadsheets (``NOT_IMAGES``) are
    skipped, anything else no reader understands is an error, and two files with one stem
    (``a.png`` and ``a.nii.gz``) are refused with both named. ``folder`` only shortens messages."""
    out: Dict[str, str] = {}
    skipped: List[str] = []
    for path in paths:
        name = os.path.basename(path.rstrip(os.sep))
        if not os.path.exists(path):
            raise ConversionError(f"{path}: file not found")
        if os.path.isdir(path) and not dicom_series.is_series_dir(path):
            raise ConversionError(f"{path}: sub-folder is not a DICOM series (expected image files or one "
                                  f"DICOM-series folder per case)")
        stem = file_stem(path)
        if stem is None:
            if name.lower().endswith(NOT_IMAGES):
                log.debug("ignoring %s (not an image)", path)
                skipped.append(path)
                continue
            raise ConversionError(f"{path}: unknown image format (supported: {SUPPORTED})")
        if stem in out:
            other = os.path.basename(out[stem]) if folder else out[stem]
            where = f" in {folder}" if folder else ""
            raise ConversionError(f"{path}: case {stem!r} appears twice{where} ({other})")
        out[stem] = path
    return out, skipped


def group_channels(stems: Dict[str, str], prefer_ids: Optional[Iterable[str]] = None,
                   n_channels: Optional[int] = None, folder: str = "") -> Dict[str, List[str]]:
    """{case_id: [channel paths]}: ``CASE_0000``-style names are grouped into channels when every file
    is named so and channels start at 0; ``prefer_ids`` (e.g. the CSV's ids) decides ambiguous cases."""
    plain = {s: [p] for s, p in stems.items()}
    parsed = {s: CHANNEL_RE.match(s) for s in stems}
    if not stems or not all(parsed.values()):
        return plain
    prefer = set(prefer_ids or ())
    if prefer and prefer == set(stems):
        return plain
    groups: Dict[str, Dict[int, str]] = {}
    for s, m in parsed.items():
        groups.setdefault(m.group(1), {})[int(m.group(2))] = stems[s]
    sizes = {len(g) for g in groups.values()}
    complete = all(sorted(g) == list(range(len(g))) for g in groups.values())
    if not complete or (n_channels is not None and sizes != {n_channels}):
        return plain
    if len(sizes) > 1:
        bad = min(groups, key=lambda k: len(groups[k]))
        raise ConversionError(f"{folder}: case {bad!r} has {len(groups[bad])} channel file(s) but others "
                              f"have {max(sizes)}")
    return {cid: [g[i] for i in range(len(g))] for cid, g in sorted(groups.items())}


def match_masks(case_ids: Iterable[str], masks_dir: str) -> Dict[str, str]:
    masks = scan_folder(masks_dir)
    case_ids = list(case_ids)
    for cid in case_ids:
        if cid not in masks:
            raise ConversionError(f"{masks_dir}: no mask for case {cid!r} (expected e.g. {cid}.nii.gz or {cid}.png)")
    extra = sorted(set(masks) - set(case_ids))
    if extra:
        raise ConversionError(f"{masks[extra[0]]}: mask for case {extra[0]!r} which has no image")
    return {cid: masks[cid] for cid in case_ids}


def read_patients(labels_csv: str, column: str, case_ids: Iterable[str], id_column: str = "case_id") -> Dict[str, str]:
    """{case_id: patient id} from the labels CSV, so splits can keep a patient on one side."""
    with open(labels_csv, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        if column not in (reader.fieldnames or []):
            raise ConversionError(f"{labels_csv}: no patient column {column!r} (columns: {reader.fieldnames})")
        rows = {str(r[id_column]).strip(): str(r[column] or "").strip() for r in reader}
    out = {}
    for cid in case_ids:
        if not rows.get(cid):
            raise ConversionError(f"{labels_csv}: case {cid!r} has no value in patient column {column!r}")
        out[cid] = rows[cid]
    return out
