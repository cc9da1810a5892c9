"""Cases read lazily, checked before anything is written, and handed to the raw writer.

``CaseSource`` stands in for ``RawCase``: pixels are read (and checked, rounded, resampled)
only when asked for, and a ``LastCase`` cache shared by one conversion keeps only the most
recent case in memory. ``write_cases`` is the shared tail of every layout: it resolves the
dataset description (label and channel names, regions, lateral pairs) and writes the dataset.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Set

import numpy as np
import SimpleITK as sitk
from tqdm import tqdm

from nnunet_mtl.conversion import dicom_series
from nnunet_mtl.conversion.description import DatasetDescription
from nnunet_mtl.conversion.image_readers import (COLOUR_CHANNEL_NAMES, LUMA, ReadOptions, image_kind, is_colour,
                                                 read_channels, read_geometry, read_mask)
from nnunet_mtl.conversion.masks import (ConversionError, ConversionReport, ConversionResult, Geometry,
                                         check_label_values, compare_geometry, infer_labels, resample,
                                         round_labels, target_grid)
from nnunet_mtl.conversion.nnunet_raw import write_raw_dataset
from nnunet_mtl.conversion.pixel_checks import (apply_value_map, binary_255_map, check_consecutive, check_finite,
                                                check_stored_finite,
                                                is_constant, summarise_map)
from nnunet_mtl.conversion.options import ConversionOptions
from nnunet_mtl.targets import CaseTable, TargetSpecError

log = logging.getLogger(__name__)

NO_MASK_LABELS = {"background": 0, "foreground": 1}


class LastCase:
    """Arrays of the one case read most recently: ``write_raw_dataset`` asks for them several times."""

    def __init__(self):
        self.owner = None
        self.arrays: Dict[str, object] = {}

    def get(self, owner, key: str, load):
        if self.owner is not owner:
            self.owner, self.arrays = owner, {}
        if key not in self.arrays:
            self.arrays[key] = load()
        return self.arrays[key]

    def clear(self) -> None:
        self.owner, self.arrays = None, {}


def _squeeze_to_2d(arr: np.ndarray, geom: Geometry):
    """A 2D mask saved as an (x, y, 1) volume -> 2D, so it can match a 2D image."""
    d = geom.direction
    geom2 = Geometry(geom.size[:2], geom.spacing[:2], geom.origin[:2], (d[0], d[1], d[3], d[4]), geom.known)
    return arr[0], geom2


class CaseSource:
    """One case on disk with the same attributes as ``RawCase``."""

    def __init__(self, case_id: str, channel_paths: Sequence[str], mask_path: Optional[str] = None,
                 options: ReadOptions = ReadOptions(), cache: Optional[LastCase] = None):
        self.case_id = case_id
        self.channel_paths = list(channel_paths)
        self.mask_path = mask_path
        self.options = options
        self.cache = cache or LastCase()
        self.extra: Dict[str, object] = {}
        self.on_read = None  # called after the channels were read: drives the progress bar
        self.value_map: Optional[Dict[int, int]] = None  # mask values read as others (0/255 -> 0/1)
        self._geometry: Optional[Geometry] = None

    @property
    def kind(self) -> str:
        return image_kind(self.channel_paths[0])

    @property
    def n_channels(self) -> int:
        per_file = 3 if self.options.colour and self.kind == "2d" else 1
        return per_file * len(self.channel_paths)

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
        def load():
            arrays = [a for i in range(len(self.channel_paths)) for a in self._read_file(i)]
            if self.on_read:
                self.on_read(1)
            return arrays
        return self.cache.get(self, "channels", load)

    @property
    def mask(self) -> Optional[np.ndarray]:
        if self.mask_path is None:
            return None
        return self.cache.get(self, "mask", lambda: apply_value_map(self._read_mask()[0], self.value_map))

    def _read_file(self, i: int) -> List[np.ndarray]:
        path = self.channel_paths[i]
        images, known = read_channels(path, self.options)
        if i > 0:
            compare_geometry(self.geometry, Geometry.of(images[0], known), self.case_id, path, f"channel {i}",
                             self.options.rel_tol)
        out = []
        for img in images:
            img = self.geometry.apply_to(sitk.Cast(img, sitk.sitkFloat32))
            if self.options.target_spacing is not None:
                img = resample(img, self.grid, self.options.image_interpolation)
            out.append(sitk.GetArrayFromImage(img))
        return out

    def _check_pixels(self, path: str, report: ConversionReport) -> None:
        """NaN/inf pixels are refused, a constant image is reported (both with the file named)."""
        check_stored_finite(path, f"image of case {self.case_id!r}")
        images, _ = read_channels(path, self.options)
        arrays = [sitk.GetArrayViewFromImage(img) for img in images]
        for a in arrays:
            check_finite(a, path, f"image of case {self.case_id!r}")
        if is_constant(arrays):
            report.constant_images.append(path)
            log.warning("%s: image of case %r is constant (one value everywhere)", path, self.case_id)

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
        for path in self.channel_paths:
            self._check_pixels(path, report)
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


def colour_read_options(options: ConversionOptions, paths: Sequence[str], report: ConversionReport) -> ReadOptions:
    """Read options for a dataset whose images are ``paths``: three channels when any 2D image is in
    colour (grey ones are repeated), one luma channel with ``options.grey``; the report says which."""
    colour = [p for p in paths if image_kind(p) == "2d" and is_colour(p)]
    if not colour:
        return options.read_options(colour=False)
    if options.grey:
        report.notes.append(f"{len(colour)} colour image(s) converted to one grey channel "
                            f"(luma {LUMA[0]:.3f} R + {LUMA[1]:.3f} G + {LUMA[2]:.3f} B)")
        return options.read_options(colour=False)
    n_grey = len(paths) - len(colour)
    report.notes.append(f"{len(colour)} colour image(s) kept as three channels (R, G, B; alpha ignored, no "
                        f"percentile clipping)" + (f"; {n_grey} grey image(s) repeated into all three" if n_grey else "")
                        + "; pass --grey (grey=True) for one luma channel")
    return options.read_options(colour=True)


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
    masked = {c.case_id: c for c in train if c.mask_path}
    mask_values = {cid: values_per_case[cid] for cid in masked}
    value_map = binary_255_map(mask_values, labels)
    if value_map:
        n_mapped = sum(1 for v in mask_values.values() if set(value_map) & v)
        report.notes.append(summarise_map(value_map, n_mapped))
        for case in masked.values():
            case.value_map = value_map
            values_per_case[case.case_id] = {value_map.get(v, v) for v in values_per_case[case.case_id]}
        mask_values = {cid: values_per_case[cid] for cid in masked}
    all_values = set().union(*values_per_case.values()) if values_per_case else set()
    report.label_values = sorted(all_values)
    report.n_train, report.n_test = len(train), len(test)
    if labels is None and masked:
        check_consecutive(mask_values, {cid: c.mask_path for cid, c in masked.items()})
        labels = infer_labels(all_values)
    elif labels is None:
        labels = dict(NO_MASK_LABELS)
    for case in train:
        if case.mask_path:
            check_label_values(values_per_case[case.case_id], labels, case.case_id, case.mask_path)
    return labels


def default_channel_names(case: CaseSource) -> Dict[str, str]:
    """nnU-Net picks normalisation by channel name: CT for CT series, min-max for clipped grey 2D
    images, R/G/B (z-score) for colour images as in nnU-Net's natural-image datasets."""
    if case.kind == "2d" and case.options.colour:
        names = [c if len(case.channel_paths) == 1 else f"{i}_{c}"
                 for i in range(len(case.channel_paths)) for c in COLOUR_CHANNEL_NAMES]
        return {str(k): n for k, n in enumerate(names)}
    if case.kind == "2d":
        name = "rescale_to_0_1"
    elif case.kind == "series" and dicom_series.series_modality(case.channel_paths[0]) == "CT":
        name = "CT"
    else:
        name = "zscore"
    return {str(i): name for i in range(case.n_channels)}


@dataclass
class LayoutDefaults:
    """What a layout assumes when the description says nothing (e.g. the pancreas labels)."""
    labels: Optional[Dict[str, int]] = None
    regions: Mapping[str, Sequence[int]] = field(default_factory=dict)
    channel_names: Optional[Dict[str, str]] = None


def write_cases(train: Sequence[CaseSource], test: Sequence[CaseSource], table: CaseTable, raw_root: str,
                dataset_id: int, name: str, description: DatasetDescription, extra_mtl: dict, overwrite: bool,
                defaults: LayoutDefaults = LayoutDefaults(), report: Optional[ConversionReport] = None
                ) -> ConversionResult:
    """Check all cases, resolve the description, then hand them to ``write_raw_dataset``."""
    report = report or ConversionReport()
    cache = LastCase()
    for case in list(train) + list(test):
        case.cache = cache
    given = description.labels or defaults.labels
    labels = check_cases(train, test, report, dict(given) if given else None)
    n_channels = train[0].n_channels
    for case in list(train) + list(test):
        if case.n_channels != n_channels:
            raise ConversionError(f"{case.channel_paths[0]}: case {case.case_id!r} has {case.n_channels} "
                                  f"channel(s) but others have {n_channels}")
    channel_names = dict(description.channel_names or defaults.channel_names or default_channel_names(train[0]))
    if len(channel_names) != n_channels:
        raise ConversionError(f"{description.source}: {len(channel_names)} channel name(s) given for "
                              f"{n_channels}-channel images")
    extra = dict(extra_mtl)
    regions = description.region_values(labels) if description.regions is not None else dict(defaults.regions)
    if regions:
        extra.update(regions=regions)
    pairs, note = description.pairs(labels)
    if pairs:
        extra.update(lateral_pairs=pairs)
    if note:
        report.notes.append(note)
    bar = tqdm(total=len(train) + len(test), desc="writing cases", unit="case", disable=None)
    for case in list(train) + list(test):
        case.on_read = bar.update
    try:
        folder = write_raw_dataset(raw_root, dataset_id, name, train, table, labels, channel_names,
                                   test_cases=test, overwrite=overwrite, extra_mtl=extra)
    except TargetSpecError as e:
        raise ConversionError(str(e)) from None
    finally:
        bar.close()
        cache.clear()
    return ConversionResult(folder, report)
