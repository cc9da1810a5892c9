"""Generic layout: an images folder, an optional masks folder with the same case ids, a labels CSV.

Images may be NIfTI/NRRD/MHA volumes, 2D PNG/JPG/DICOM radiographs, or one DICOM-series folder
per case; multi-channel cases use nnU-Net's ``CASE_0000``, ``CASE_0001`` naming. Cases are read
lazily (``CaseSource``) so a large dataset never sits in memory at once.
"""
from __future__ import annotations

import csv
import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Set

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_mtl.conversion import dicom_series, radiograph
from nnunet_mtl.conversion.masks import (DEFAULT_REL_TOL, GEOMETRY_KEYS, ConversionError, ConversionReport,
                                         ConversionResult, Geometry, check_label_values, compare_geometry,
                                         infer_labels, resample, round_labels, target_grid)
from nnunet_mtl.conversion.nnunet_raw import write_raw_dataset
from nnunet_mtl.targets import CaseTable, TargetSpecError, load_spec_file, read_labels_csv

log = logging.getLogger(__name__)

VOLUME_EXTS = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
CHANNEL_RE = re.compile(r"^(.+)_(\d{4})$")
NO_MASK_LABELS = {"background": 0, "foreground": 1}


# ------------------------------------------------------------------------------------------ reading
def file_stem(path: str) -> Optional[str]:
    """Case name of a supported image file or series folder; None for anything else (notes, CSVs)."""
    name = os.path.basename(path.rstrip(os.sep))
    if os.path.isdir(path):
        return name
    low = name.lower()
    for ext in VOLUME_EXTS + radiograph.PIL_EXTS + radiograph.DICOM_EXTS:
        if low.endswith(ext):
            return name[: -len(ext)]
    return name if radiograph.is_dicom_file(path) else None


def image_kind(path: str) -> str:
    """'series' (DICOM folder), '2d' (PNG/JPG/DICOM file) or 'volume' (anything SimpleITK reads)."""
    if os.path.isdir(path):
        return "series"
    return "2d" if radiograph.is_2d_file(path) else "volume"


def read_image(path: str, clip_percentiles=radiograph.DEFAULT_CLIP):
    """(SimpleITK image, geometry keys the file really stores)."""
    kind = image_kind(path)
    if kind == "series":
        return dicom_series.read_dicom_series(path), GEOMETRY_KEYS
    if kind == "2d":
        arr, spacing = radiograph.read_radiograph(path, clip_percentiles)
        img = sitk.GetImageFromArray(arr)
        if spacing:
            img.SetSpacing(spacing[::-1])
        return img, ("spacing",) if spacing else ()
    try:
        return sitk.ReadImage(path), GEOMETRY_KEYS
    except RuntimeError:
        raise ConversionError(f"{path}: cannot read image (not a valid NIfTI/NRRD/MHA file?)") from None


def read_geometry(path: str) -> Geometry:
    """Geometry without the pixels where the format allows (volumes); others are small or rare."""
    if image_kind(path) != "volume":
        img, known = read_image(path, None)
        return Geometry.of(img, known)
    reader = sitk.ImageFileReader()
    reader.SetFileName(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        raise ConversionError(f"{path}: cannot read image header (not a valid NIfTI/NRRD/MHA file?)") from None
    return Geometry(tuple(reader.GetSize()), tuple(reader.GetSpacing()), tuple(reader.GetOrigin()),
                    tuple(reader.GetDirection()))


def read_mask(path: str):
    """(stored mask values as numpy, Geometry) without any rescaling."""
    if image_kind(path) == "2d":
        arr, spacing = radiograph.read_mask_2d(path)
        img = sitk.GetImageFromArray(np.zeros(np.asarray(arr).shape[:2], np.uint8))
        if spacing:
            img.SetSpacing(spacing[::-1])
        return np.asarray(arr), Geometry.of(img, ("spacing",) if spacing else ())
    img, known = read_image(path, None)
    return sitk.GetArrayFromImage(img), Geometry.of(img, known)


def _squeeze_to_2d(arr: np.ndarray, geom: Geometry):
    """A 2D mask saved as an (x, y, 1) volume -> 2D, so it can match a 2D image."""
    d = geom.direction
    geom2 = Geometry(geom.size[:2], geom.spacing[:2], geom.origin[:2], (d[0], d[1], d[3], d[4]), geom.known)
    return arr[0], geom2


# ------------------------------------------------------------------------------------------- cases
@dataclass(frozen=True)
class ReadOptions:
    clip_percentiles: Optional[Sequence[float]] = radiograph.DEFAULT_CLIP
    target_spacing: Optional[Sequence[float]] = None
    image_interpolation: str = "linear"
    rel_tol: float = DEFAULT_REL_TOL


_LAST_LOADED: Dict[str, object] = {}  # one case's arrays: write_raw_dataset asks for them several times


class CaseSource:
    """Stands in for ``RawCase``: same attributes, but pixels are read (and checked, rounded,
    resampled) only when asked for, and only the most recent case is kept in memory."""

    def __init__(self, case_id: str, channel_paths: Sequence[str], mask_path: Optional[str] = None,
                 options: ReadOptions = ReadOptions()):
        self.case_id = case_id
        self.channel_paths = list(channel_paths)
        self.mask_path = mask_path
        self.options = options
        self.extra: Dict[str, object] = {}
        self.on_read = None  # called after the channels were read: drives the progress bar
        self._geometry: Optional[Geometry] = None

    @property
    def kind(self) -> str:
        return image_kind(self.channel_paths[0])

    @property
    def geometry(self) -> Geometry:
        if self._geometry is None:
            self._geometry = read_geometry(self.channel_paths[0])
        return self._geometry

    @property
    def grid(self) -> Geometry:
        return target_grid(self.geometry, self.options.target_spacing)

    @property
    def spacing(self):
        return self.grid.numpy_spacing

    @property
    def origin(self):
        return self.grid.origin

    @property
    def direction(self):
        return self.grid.direction

    @property
    def channels(self) -> List[np.ndarray]:
        return self._cached("channels", lambda: [self._read_channel(i) for i in range(len(self.channel_paths))])

    @property
    def mask(self) -> Optional[np.ndarray]:
        if self.mask_path is None:
            return None
        return self._cached("mask", lambda: self._read_mask()[0])

    def _cached(self, key: str, load):
        if _LAST_LOADED.get("owner") is not self:
            _LAST_LOADED.clear()
            _LAST_LOADED["owner"] = self
        if key not in _LAST_LOADED:
            _LAST_LOADED[key] = load()
            if key == "channels" and self.on_read:
                self.on_read(1)
        return _LAST_LOADED[key]

    def _read_channel(self, i: int) -> np.ndarray:
        path = self.channel_paths[i]
        img, known = read_image(path, self.options.clip_percentiles)
        if i > 0:
            compare_geometry(self.geometry, Geometry.of(img, known), self.case_id, path, f"channel {i}",
                             self.options.rel_tol)
        img = self.geometry.apply_to(sitk.Cast(img, sitk.sitkFloat32))
        if self.options.target_spacing is not None:
            img = resample(img, self.grid, self.options.image_interpolation)
        return sitk.GetArrayFromImage(img)

    def _read_mask(self):
        """(uint8 labels on the case grid, voxels changed by rounding, geometry note or None)."""
        arr, geom = read_mask(self.mask_path)
        if len(geom.size) == 3 and len(self.geometry.size) == 2 and geom.size[2] == 1:
            arr, geom = _squeeze_to_2d(arr, geom)
        note = compare_geometry(self.geometry, geom, self.case_id, self.mask_path, "mask", self.options.rel_tol)
        labels, changed = round_labels(arr, self.case_id, self.mask_path)
        if self.options.target_spacing is not None:
            img = self.geometry.apply_to(sitk.GetImageFromArray(labels))
            labels = sitk.GetArrayFromImage(resample(img, self.grid, "nearest"))
        return labels, changed, note

    def check(self, report: ConversionReport) -> Set[int]:
        """Validate every file of the case before anything is written; return the mask's label values."""
        for i, path in enumerate(self.channel_paths[1:], start=1):
            note = compare_geometry(self.geometry, read_geometry(path), self.case_id, path, f"channel {i}",
                                    self.options.rel_tol)
            if note:
                report.geometry_copied[path] = note
        if self.mask_path is None:
            return set()
        labels, changed, note = self._read_mask()
        if changed:
            report.rounded_voxels[self.case_id] = changed
            log.warning("%s: rounded %d non-integer mask voxels of case %r", self.mask_path, changed, self.case_id)
        if note:
            report.geometry_copied[self.mask_path] = note
            log.warning("%s: %s differ(s) from the image of case %r by rounding noise; copied the image's",
                        self.mask_path, note, self.case_id)
        return set(int(v) for v in np.unique(labels))


def check_cases(train: Sequence[CaseSource], test: Sequence[CaseSource], report: ConversionReport,
                labels: Optional[Dict[str, int]]) -> Dict[str, int]:
    """Read every mask once (progress bar), fill the report, and return the labels dict to use."""
    values_per_case = {}
    for case in tqdm(list(train) + list(test), desc="checking cases", unit="case", disable=None):
        values_per_case[case.case_id] = case.check(report)
        case.geometry  # header of channel 0: surfaces unreadable files before anything is written
    kinds = {c.kind for c in list(train) + list(test)}
    if len(kinds) > 1:
        raise ConversionError(f"mixed image kinds {sorted(kinds)}: all cases must be 2D files, volumes, "
                              f"or DICOM series folders")
    all_values = set().union(*values_per_case.values()) if values_per_case else set()
    report.label_values = sorted(all_values)
    report.n_train, report.n_test = len(train), len(test)
    has_masks = any(c.mask_path for c in train)
    if labels is None:
        labels = infer_labels(all_values) if has_masks else dict(NO_MASK_LABELS)
    for case in train:
        if case.mask_path:
            check_label_values(values_per_case[case.case_id], labels, case.case_id, case.mask_path)
    return labels


# ------------------------------------------------------------------------------------- file naming
def scan_folder(folder: str) -> Dict[str, str]:
    """{stem: path} of the supported images (or DICOM-series subfolders) directly in ``folder``."""
    if not os.path.isdir(folder):
        raise ConversionError(f"{folder}: folder not found")
    out = {}
    for name in sorted(os.listdir(folder)):
        if name.startswith("."):
            continue
        path = os.path.join(folder, name)
        if os.path.isdir(path) and not dicom_series.is_series_dir(path):
            raise ConversionError(f"{path}: sub-folder is not a DICOM series (expected image files or one "
                                  f"DICOM-series folder per case)")
        stem = file_stem(path)
        if stem is None:
            log.debug("ignoring %s (not an image)", path)
            continue
        if stem in out:
            raise ConversionError(f"{path}: case {stem!r} appears twice in {folder} ({os.path.basename(out[stem])})")
        out[stem] = path
    return out


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


# ------------------------------------------------------------------------------------------ convert
def default_channel_names(case: CaseSource, n: int) -> Dict[str, str]:
    """nnU-Net picks normalisation by channel name: CT for CT series, min-max for clipped radiographs."""
    if case.kind == "2d":
        name = "rescale_to_0_1"
    elif case.kind == "series" and dicom_series.series_modality(case.channel_paths[0]) == "CT":
        name = "CT"
    else:
        name = "zscore"
    return {str(i): name for i in range(n)}


def write_cases(train: Sequence[CaseSource], test: Sequence[CaseSource], table: CaseTable, raw_root: str,
                dataset_id: int, name: str, labels: Optional[Dict[str, int]], channel_names: Optional[Dict[str, str]],
                extra_mtl: dict, overwrite: bool, description: str = "") -> ConversionResult:
    """Check all cases, then hand them to ``write_raw_dataset`` (shared tail of every layout)."""
    report = ConversionReport()
    labels = check_cases(train, test, report, labels)
    n_channels = len(train[0].channel_paths)
    for case in list(train) + list(test):
        if len(case.channel_paths) != n_channels:
            raise ConversionError(f"{case.channel_paths[0]}: case {case.case_id!r} has {len(case.channel_paths)} "
                                  f"channel(s) but others have {n_channels}")
    channel_names = channel_names or default_channel_names(train[0], n_channels)
    if len(channel_names) != n_channels:
        raise ConversionError(f"{len(channel_names)} channel name(s) given for {n_channels}-channel images")
    bar = tqdm(total=len(train) + len(test), desc="writing cases", unit="case", disable=None)
    for case in list(train) + list(test):
        case.on_read = bar.update
    try:
        folder = write_raw_dataset(raw_root, dataset_id, name, train, table, labels, channel_names,
                                   test_cases=test, overwrite=overwrite, extra_mtl=extra_mtl, description=description)
    except TargetSpecError as e:
        raise ConversionError(str(e)) from None
    finally:
        bar.close()
        _LAST_LOADED.clear()
    return ConversionResult(folder, report)


def convert_generic(images_dir: str, raw_root: str, dataset_id: int, name: str, labels_csv: str,
                    masks_dir: Optional[str] = None, test_dir: Optional[str] = None, spec_json: Optional[str] = None,
                    patient_column: Optional[str] = None, labels: Optional[Dict[str, int]] = None,
                    channel_names: Optional[Dict[str, str]] = None, options: ReadOptions = ReadOptions(),
                    overwrite: bool = False, id_column: str = "case_id") -> ConversionResult:
    """Images + optional masks + labels CSV -> nnU-Net raw dataset with the ``mtl`` block."""
    try:
        spec = load_spec_file(spec_json) if spec_json else None
        table = read_labels_csv(labels_csv, spec, id_column=id_column,
                                ignore_columns=[patient_column] if patient_column else ())
    except TargetSpecError as e:
        raise ConversionError(str(e)) from None
    train_files = group_channels(scan_folder(images_dir), prefer_ids=table.values, folder=images_dir)
    if not train_files:
        raise ConversionError(f"{images_dir}: no images found")
    n_ch = len(next(iter(train_files.values())))
    test_files = group_channels(scan_folder(test_dir), n_channels=n_ch, folder=test_dir) if test_dir else {}
    both = sorted(set(train_files) & set(test_files))
    if both:
        raise ConversionError(f"{test_dir}: case {both[0]!r} is both a training and a test image")
    table = CaseTable(table.spec, {c: v for c, v in table.values.items() if c not in test_files})
    try:
        table.validate(train_files, source=labels_csv)
    except TargetSpecError as e:
        raise ConversionError(str(e)) from None
    masks = match_masks(train_files, masks_dir) if masks_dir else {}
    train = [CaseSource(c, p, masks.get(c), options) for c, p in sorted(train_files.items())]
    test = [CaseSource(c, p, None, options) for c, p in sorted(test_files.items())]
    extra = {"patients": read_patients(labels_csv, patient_column, train_files, id_column)} if patient_column else {}
    return write_cases(train, test, table, raw_root, dataset_id, name, labels, channel_names, extra, overwrite)
