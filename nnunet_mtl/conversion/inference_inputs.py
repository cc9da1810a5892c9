"""Test inputs: checked against the model, converted once, and recorded with what they came from.

Users predict on what they hold (PNG/JPG/BMP/TIFF/DICOM radiographs, NIfTI/NRRD volumes with any
name, DICOM-series folders) or on nnU-Net's own layout (``CASE_0000.nii.gz``). Before anything is
predicted, with one line naming the file when it fails:

- the inputs are not empty, every file is an image or a known side file (skipped, as in
  conversion: ``case_discovery.index_images``), and no two files name one case (``a.png`` and
  ``a.nii.gz``);
- every case has the model's channel count and dimensionality (a 2-channel image into a
  1-channel model, a 3D volume into a model trained on 2D images are refused);
- converted pixels are finite.

Converted copies live in a work folder that belongs to this module, with ``conversions.json``
(``provenance``): per case the source paths, their size, mtime and SHA-256 and the settings used
(clip percentiles, channels per file). A re-run reconverts exactly the cases whose source or settings
changed (a replaced file is caught by its content even when its mtime is older), removes the
conversions whose source is gone, and ``force`` reconverts everything.
"""
from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import SimpleITK as sitk

from nnunet_mtl.conversion.case_discovery import group_channels, index_images
from nnunet_mtl.conversion.image_readers import (COLOUR_CHANNEL_NAMES, DEFAULT_CLIP, ReadOptions, read_channels,
                                                 reader_for)
from nnunet_mtl.conversion.masks import ConversionError
from nnunet_mtl.conversion.nnunet_raw import write_image
from nnunet_mtl.conversion.pixel_checks import check_finite, check_stored_finite, is_constant
from nnunet_mtl.conversion.provenance import (NNUNET_NAME, load_manifest, new_record, prune, up_to_date,
                                              write_manifest)
from nnunet_mtl.io_utils import atomic_save_image

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelInputs:
    """What a trained model takes: its channels (``dataset.json`` ``channel_names``) and whether it was
    trained on 2D images or 3D volumes (``image_dims``)."""
    channel_names: Mapping[str, str]
    image_dims: int

    @classmethod
    def from_plans(cls, dataset_json: Mapping, patch_size: Sequence[int],
                   median_shape: Optional[Sequence[float]]) -> "ModelInputs":
        """A 3D configuration takes volumes. A 2D one takes 2D images when it was trained on them (nnU-Net
        stores 2D images as 1-slice volumes, so the median shape after transposition starts with 1) and
        3D volumes, slice by slice, otherwise."""
        if len(patch_size) == 3:
            dims = 3
        else:
            dims = 2 if median_shape is not None and int(round(float(median_shape[0]))) == 1 else 3
        return cls(dict(dataset_json["channel_names"]), dims)

    @property
    def names(self) -> List[str]:
        return [str(self.channel_names[k]) for k in sorted(self.channel_names, key=int)]

    @property
    def n_channels(self) -> int:
        return len(self.channel_names)

    @property
    def colour(self) -> bool:
        """Channels named R, G, B (or 0_R, 0_G, 0_B, 1_R, ...) as conversion names colour images."""
        names = self.names
        return bool(names) and len(names) % 3 == 0 and all(
            n.split("_")[-1] == COLOUR_CHANNEL_NAMES[i % 3] for i, n in enumerate(names))

    @property
    def files_per_case(self) -> int:
        return self.n_channels // 3 if self.colour else self.n_channels

    def describe(self) -> str:
        return f"{self.n_channels} channel(s) ({', '.join(self.names)})"


@dataclass
class PreparedInputs:
    """What nnU-Net reads (``folder``), per case its files there, and what this run did."""
    folder: str
    cases: Dict[str, List[str]] = field(default_factory=dict)
    sources: Dict[str, List[str]] = field(default_factory=dict)
    converted: List[str] = field(default_factory=list)   # (re)converted this run: new or changed inputs
    reused: List[str] = field(default_factory=list)      # conversions still up to date
    dropped: List[str] = field(default_factory=list)     # conversions removed because the input is gone
    skipped: List[str] = field(default_factory=list)     # side files (.csv, .txt, ...) next to the images
    notes: List[str] = field(default_factory=list)

    def summary(self) -> str:
        parts = [f"{len(self.cases)} input case(s)"]
        if self.converted or self.reused:
            parts.append(f"{len(self.converted)} converted, {len(self.reused)} unchanged")
        if self.dropped:
            parts.append(f"{len(self.dropped)} conversion(s) removed, their input is gone "
                         f"({', '.join(sorted(self.dropped))})")
        if self.skipped:
            parts.append(f"skipped {len(self.skipped)} side file(s) "
                         f"({', '.join(os.path.basename(p) for p in self.skipped)})")
        return f"{self.folder}: " + "; ".join(parts + self.notes)


# ------------------------------------------------------------------------------------- finding cases
def find_input_cases(paths: Sequence[str], model: Optional[ModelInputs] = None,
                     where: Optional[str] = None) -> Tuple[Dict[str, List[str]], List[str]]:
    """({case id: channel files}, skipped side files). ``CASE_XXXX.nii.gz`` files are channels by
    nnU-Net's convention; other names are grouped like conversion does, guided by the model's count."""
    stems, skipped = index_images(paths, where)
    groups: Dict[str, Dict[int, str]] = {}
    other = {}
    for stem, path in stems.items():
        m = NNUNET_NAME.match(os.path.basename(path))
        if m and os.path.isfile(path):
            groups.setdefault(m.group(1), {})[int(m.group(2))] = path
        else:
            other[stem] = path
    cases: Dict[str, List[str]] = {}
    for cid, g in sorted(groups.items()):
        if sorted(g) != list(range(len(g))):
            raise ConversionError(f"{g[min(g)]}: case {cid!r} has channel files {[f'{i:04d}' for i in sorted(g)]}; "
                                  f"expected 0000, 0001, ... without gaps")
        cases[cid] = [g[i] for i in range(len(g))]
    hint = model.files_per_case if model is not None else None
    for cid, files in group_channels(other, n_channels=hint, folder=where or "").items():
        if cid in cases:
            raise ConversionError(f"{files[0]}: case {cid!r} appears twice ({cases[cid][0]})")
        cases[cid] = files
    return cases, skipped


def image_facts(path: str) -> Tuple[int, int, tuple]:
    """(dimensionality, channels stored per pixel, size) from the header where the format has one.
    A volume with one slice counts as 2D (how 2D images are stored as NIfTI)."""
    reader = reader_for(path)
    if reader.kind == "series":
        return 3, 1, ()
    if reader.kind == "2d":
        return 2, 3 if reader.is_colour(path) else 1, tuple(reader.geometry(path).size)
    info = reader.header(path)
    size, dims = tuple(info.GetSize()), info.GetDimension()
    if dims == 3 and size[2] == 1:
        dims = 2
    return dims, info.GetNumberOfComponents(), size


def channels_per_file(case_id: str, paths: Sequence[str], model: Optional[ModelInputs]) -> List[int]:
    """How many channels each file of the case gives the model; refuses a case the model cannot take."""
    if model is None:  # no model to check against: one (grey) channel per file, as before
        return [1] * len(paths)
    facts = [image_facts(p) for p in paths]
    kind = reader_for(paths[0]).kind
    dims, _, size = facts[0]
    if dims != model.image_dims:
        shown = f" (size {list(size)})" if size else ""
        if dims == 2:
            raise ConversionError(f"{paths[0]}: a 2D image{shown} but the model takes 3D volumes")
        if model.image_dims == 2:
            raise ConversionError(f"{paths[0]}: a {dims}D volume{shown} but the model was trained on 2D images")
        raise ConversionError(f"{paths[0]}: a {dims}D image{shown} but the model takes 3D volumes with one file "
                              f"per channel (CASE_0000, CASE_0001, ...)")
    if kind == "2d":
        colour = model.n_channels == 3 * len(paths) and (model.colour or any(f[1] == 3 for f in facts))
        per_file = [3 if colour else 1] * len(paths)
    else:
        per_file = [f[1] for f in facts]
    if sum(per_file) != model.n_channels:
        files = f" in {len(paths)} files" if len(paths) > 1 else ""
        raise ConversionError(f"{paths[0]}: case {case_id!r} has {sum(per_file)} channel(s){files} but the model "
                              f"takes {model.describe()}")
    multi = [p for p, f in zip(paths, facts) if kind != "2d" and f[1] > 1]
    if multi:
        raise ConversionError(f"{multi[0]}: stores {image_facts(multi[0])[1]} components per voxel; the model "
                              f"takes one file per channel (CASE_0000, CASE_0001, ...)")
    return per_file


# ------------------------------------------------------------------------------------- converting
def _convert_case(case_id: str, paths: Sequence[str], per_file: Sequence[int], folder: str,
                  clip_percentiles, notes: List[str]) -> List[str]:
    """Write the case's channel files into ``folder``; returns their names."""
    names: List[str] = []
    for path, n in zip(paths, per_file):
        check_stored_finite(path)
        if NNUNET_NAME.match(os.path.basename(path)):  # already nnU-Net's format: an exact copy
            name = f"{case_id}_{len(names):04d}.nii.gz"
            atomic_save_image(lambda tmp, src=path: shutil.copyfile(src, tmp), os.path.join(folder, name))
            names.append(name)
            continue
        images, _ = read_channels(path, ReadOptions(clip_percentiles=clip_percentiles, colour=n == 3))
        arrays = [sitk.GetArrayViewFromImage(img) for img in images]
        for a in arrays:
            check_finite(a, path)
        if is_constant(arrays):
            log.warning("%s: constant image (one value everywhere)", path)
            notes.append(f"{os.path.basename(path)} is a constant image")
        for img in images:
            name = f"{case_id}_{len(names):04d}.nii.gz"
            write_image(sitk.Cast(img, sitk.sitkFloat32), os.path.join(folder, name))
            names.append(name)
    return names


def prepare_cases(paths: Sequence[str], folder: str, model: Optional[ModelInputs] = None,
                  clip_percentiles=DEFAULT_CLIP, force: bool = False, where: Optional[str] = None) -> PreparedInputs:
    """Check ``paths`` (files and DICOM-series folders), convert what is new or changed into ``folder``,
    drop conversions of inputs that are gone, and return what nnU-Net should read.

    Inputs already named ``CASE_XXXX.nii.gz`` inside ``folder`` are used in place; then ``folder`` is
    the user's, and nothing is written or removed there. ``where`` names the input folder in messages."""
    cases, skipped = find_input_cases(paths, model, where)
    if not cases:
        extra = f" (only side files: {', '.join(os.path.basename(p) for p in skipped)})" if skipped else ""
        raise ConversionError(f"{where or ', '.join(paths) or folder}: no images to predict{extra}")
    per_file = {cid: channels_per_file(cid, files, model) for cid, files in sorted(cases.items())}
    result = PreparedInputs(folder=folder, skipped=list(skipped))
    folder_abs = os.path.abspath(folder)
    in_place = {cid for cid, files in cases.items()
                if all(os.path.dirname(os.path.abspath(p)) == folder_abs for p in files)
                and all(NNUNET_NAME.match(os.path.basename(p)) for p in files)}
    if in_place:
        if len(in_place) != len(cases):
            other = next(cid for cid in sorted(cases) if cid not in in_place)
            raise ConversionError(f"{cases[other][0]}: cannot convert into {folder}, which holds the user's own "
                                  f"nnU-Net inputs")
        for files in cases.values():
            for path in files:
                check_stored_finite(path)
        result.cases = {cid: list(files) for cid, files in cases.items()}
        result.sources = {cid: list(files) for cid, files in cases.items()}
        return result
    os.makedirs(folder, exist_ok=True)
    records = load_manifest(folder)
    clip = None if clip_percentiles is None else [float(c) for c in clip_percentiles]
    luma = 0
    try:
        for cid in sorted(cases):
            sources = [os.path.abspath(p) for p in cases[cid]]
            settings = {"clip_percentiles": clip, "channels_per_file": per_file[cid]}
            record = records.get(cid)
            if not force and up_to_date(record, sources, settings, folder):
                result.reused.append(cid)
            else:
                records.pop(cid, None)  # until the new files are complete, the case has no valid record
                names = _convert_case(cid, cases[cid], per_file[cid], folder, clip_percentiles, result.notes)
                records[cid] = new_record(sources, settings, names)
                result.converted.append(cid)
                luma += sum(1 for p, n in zip(cases[cid], per_file[cid])
                            if n == 1 and reader_for(p).kind == "2d" and image_facts(p)[1] == 3)
            result.cases[cid] = [os.path.join(folder, f) for f in records[cid]["files"]]
            result.sources[cid] = list(cases[cid])
        result.dropped = prune(folder, records, result.cases)
    finally:
        write_manifest(folder, records)
    if luma:
        result.notes.append(f"{luma} colour image(s) converted to one grey (luma) channel for a "
                            f"{model.n_channels if model else 1}-channel model")
    if result.dropped or result.skipped or result.notes:
        log.warning("%s", result.summary())
    else:
        log.info("%s", result.summary())
    return result

