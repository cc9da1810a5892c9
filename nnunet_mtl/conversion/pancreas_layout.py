"""Pancreas-challenge layout: ``train|validation/<class>/NAME_0000.nii.gz`` + ``NAME.nii.gz``, ``test/``.

The class lives only in the folder name, so it is read from there (never parsed out of file
names), and the challenge's own validation cases are remembered in the ``mtl`` block
(``fixed_validation``) so ``split_tools`` can reproduce the official split.
"""
from __future__ import annotations

import logging
import os
import re
from typing import Dict, List, Optional, Sequence, Tuple

from nnunet_mtl.conversion.case_discovery import CHANNEL_RE
from nnunet_mtl.conversion.cases import CaseSource, LayoutDefaults, write_cases
from nnunet_mtl.conversion.image_readers import VolumeReader
from nnunet_mtl.conversion.layout import InputLayout
from nnunet_mtl.conversion.masks import ConversionError, ConversionResult
from nnunet_mtl.conversion.options import ConversionOptions
from nnunet_mtl.targets import CLASSIFICATION, CaseTable, Target, TargetSpec, TargetSpecError

log = logging.getLogger(__name__)

PANCREAS_LABELS = {"background": 0, "pancreas": 1, "lesion": 2}
PANCREAS_REGIONS = {"whole": [1, 2], "lesion": [2]}
LABELLED_SPLITS = ("train", "validation")
TEST_SPLIT = "test"


def natural_key(text: str):
    """'subtype2' before 'subtype10'."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def is_pancreas_layout(root: str) -> bool:
    train = os.path.join(root, "train")
    return os.path.isdir(train) and any(os.path.isdir(os.path.join(train, d)) and not d.startswith(".")
                                        for d in os.listdir(train))


def _volume_files(folder: str) -> Dict[str, str]:
    out = {}
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or not name.lower().endswith(VolumeReader.extensions):
            continue
        if os.path.isdir(path):
            raise ConversionError(f"{path}: unexpected folder inside {folder}")
        out[VolumeReader.stem(path)] = path
    return out


def scan_case_folder(folder: str, with_masks: bool = True) -> Tuple[Dict[str, List[str]], Dict[str, str]]:
    """({case: channel paths}, {case: mask path}); NAME.nii.gz is a mask when NAME_0000.nii.gz exists."""
    stems = _volume_files(folder)
    masks = {s: p for s, p in stems.items() if f"{s}_0000" in stems}
    channels: Dict[str, Dict[int, str]] = {}
    for stem, path in stems.items():
        if stem in masks:
            continue
        m = CHANNEL_RE.match(stem)
        if not m:
            raise ConversionError(f"{path}: not an image named NAME_0000.nii.gz, and no NAME_0000.nii.gz "
                                  f"exists for it to be the mask of")
        channels.setdefault(m.group(1), {})[int(m.group(2))] = path
    out = {}
    for cid, chans in sorted(channels.items()):
        if sorted(chans) != list(range(len(chans))):
            raise ConversionError(f"{folder}: case {cid!r} has channels {sorted(chans)}; expected 0000, 0001, ...")
        if with_masks and cid not in masks:
            raise ConversionError(f"{chans[0]}: missing mask for case {cid!r} (expected {cid}.nii.gz next to it)")
        out[cid] = [chans[i] for i in range(len(chans))]
    if masks and not with_masks:
        log.info("%s: ignoring %d mask file(s) in the test folder", folder, len(masks))
    return out, (masks if with_masks else {})


def find_cases(root: str, classes: Optional[Sequence[str]] = None):
    """Labelled cases as {case: (class, split, channel paths, mask path)}, test cases as {case: paths},
    and the class names (given, or the sorted class-folder names)."""
    labelled, folders = {}, {}
    for split in LABELLED_SPLITS:
        split_dir = os.path.join(root, split)
        if not os.path.isdir(split_dir):
            continue
        for name in sorted(os.listdir(split_dir), key=natural_key):
            path = os.path.join(split_dir, name)
            if name.startswith("."):
                continue
            if not os.path.isdir(path):
                raise ConversionError(f"{path}: file outside a class folder (expected {split}/<class>/...)")
            if classes is not None and name not in classes:
                raise ConversionError(f"{path}: unknown class folder {name!r} (known classes: {list(classes)})")
            folders.setdefault(name, []).append(split)
            images, masks = scan_case_folder(path)
            for cid, chans in images.items():
                if cid in labelled:
                    raise ConversionError(f"{chans[0]}: case {cid!r} also appears in {labelled[cid][1]}/{labelled[cid][0]}")
                labelled[cid] = (name, split, chans, masks[cid])
    if not labelled:
        raise ConversionError(f"{root}: no labelled cases found under train/<class>/")
    if classes is None:
        only_val = sorted(c for c, splits in folders.items() if "train" not in splits)
        if only_val:
            raise ConversionError(f"{os.path.join(root, 'validation', only_val[0])}: class folder has no "
                                  f"counterpart in train/ (pass the class names explicitly if that is intended)")
        classes = sorted(folders, key=natural_key)
    test_dir = os.path.join(root, TEST_SPLIT)
    test = scan_case_folder(test_dir, with_masks=False)[0] if os.path.isdir(test_dir) else {}
    clash = sorted(set(test) & set(labelled))
    if clash:
        raise ConversionError(f"{test[clash[0]][0]}: test case {clash[0]!r} is also a labelled case")
    return labelled, test, list(classes)


def _target(options: ConversionOptions):
    """Target name and class names (from a spec, when the user wants to fix them)."""
    spec = options.targets()
    if spec is None:
        return "subtype", None
    if len(spec) != 1 or not spec.targets[0].is_classification:
        raise ConversionError(f"{options.spec_json or options.description.source}: the pancreas layout carries "
                              f"exactly one classification target (the class folders); got {spec.names}")
    return spec.targets[0].name, list(spec.targets[0].classes)


class PancreasLayout(InputLayout):
    """Challenge layout -> nnU-Net raw dataset; validation/ cases are listed as ``fixed_validation``."""
    name = "pancreas"
    expects = "train/<class>/ folders (pancreas layout)"

    def recognises(self, input_dir: str) -> bool:
        return is_pancreas_layout(input_dir)

    def convert(self, input_dir, raw_root, dataset_id, name, options, overwrite=False) -> ConversionResult:
        if options.labels_csv or options.masks_dir or options.patient_column:
            raise ConversionError(f"{input_dir}: the pancreas layout takes classes from folders and masks from "
                                  f"next to the images; labels_csv / masks_dir / patient_column do not apply")
        target_name, classes = _target(options)
        labelled, test_files, classes = find_cases(input_dir, classes)
        try:
            spec = TargetSpec((Target(target_name, CLASSIFICATION, classes=tuple(classes)),))
        except TargetSpecError as e:
            raise ConversionError(f"{input_dir}: {e}") from None
        table = CaseTable.from_mapping(spec, {cid: {target_name: v[0]} for cid, v in labelled.items()},
                                       source=input_dir)
        read = options.read_options()
        train = [CaseSource(cid, v[2], v[3], read) for cid, v in sorted(labelled.items())]
        test = [CaseSource(cid, p, None, read) for cid, p in sorted(test_files.items())]
        n_ch = len(train[0].channel_paths)
        extra = {"fixed_validation": sorted(c for c, v in labelled.items() if v[1] == "validation"),
                 "source_layout": self.name}
        # the regions only make sense for the default pancreas/lesion labels
        defaults = LayoutDefaults(labels=dict(PANCREAS_LABELS),
                                  regions=PANCREAS_REGIONS if options.description.labels is None else {},
                                  channel_names={str(i): "CT" for i in range(n_ch)})
        return write_cases(train, test, table, raw_root, dataset_id, name, options.description, extra, overwrite,
                           defaults)
