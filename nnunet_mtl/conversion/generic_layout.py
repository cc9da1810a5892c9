"""Generic layout: an images folder, an optional masks folder with the same case ids, a labels CSV.

Images may be NIfTI/NRRD/MHA volumes, 2D PNG/JPG/BMP/TIFF/DICOM images, or one DICOM-series
folder per case; multi-channel cases use nnU-Net's ``CASE_0000``, ``CASE_0001`` naming.
Folder names follow either convention (``images`` or ``imagesTr``, ``masks`` or ``labelsTr``).
"""
from __future__ import annotations

import os
from typing import Optional

from nnunet_mtl.conversion.case_discovery import first_dir, group_channels, match_masks, read_patients, scan_folder
from nnunet_mtl.conversion.cases import CaseSource, colour_read_options, write_cases
from nnunet_mtl.conversion.image_readers import image_kind
from nnunet_mtl.conversion.layout import InputLayout
from nnunet_mtl.conversion.masks import ConversionError, ConversionReport, ConversionResult
from nnunet_mtl.targets import CaseTable, TargetSpecError, read_labels_csv

IMAGE_DIRS = ("images", "imagesTr")
MASK_DIRS = ("masks", "labelsTr")
TEST_DIRS = ("test_images", "imagesTs")
LABELS_CSV = "labels.csv"


class GenericLayout(InputLayout):
    """Images + optional masks + labels CSV -> nnU-Net raw dataset with the ``mtl`` block."""
    name = "generic"
    expects = "an images/ (imagesTr/) folder with a labels CSV"
    expected_kind: Optional[str] = None  # subclasses accept only '2d' files or 'series' folders
    id_column = "case_id"

    def recognises(self, input_dir: str) -> bool:
        return first_dir(input_dir, IMAGE_DIRS) is not None

    def convert(self, input_dir, raw_root, dataset_id, name, options, overwrite=False) -> ConversionResult:
        images_dir = first_dir(input_dir, IMAGE_DIRS) or input_dir
        masks_dir = options.masks_dir or first_dir(input_dir, MASK_DIRS)
        test_dir = options.test_dir or first_dir(input_dir, TEST_DIRS)
        labels_csv = options.labels_csv or os.path.join(input_dir, LABELS_CSV)
        if not os.path.isfile(labels_csv):
            raise ConversionError(f"{labels_csv}: labels CSV not found (case_id + one column per target)")
        try:
            table = read_labels_csv(labels_csv, options.targets(), id_column=self.id_column,
                                    ignore_columns=[options.patient_column] if options.patient_column else ())
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
        all_paths = [p for files in (train_files, test_files) for paths in files.values() for p in paths]
        self.check_kind(all_paths)
        table = CaseTable(table.spec, {c: v for c, v in table.values.items() if c not in test_files})
        try:
            table.validate(train_files, source=labels_csv)
        except TargetSpecError as e:
            raise ConversionError(str(e)) from None
        masks = match_masks(train_files, masks_dir) if masks_dir else {}
        report = ConversionReport()
        read = colour_read_options(options, all_paths, report)
        train = [CaseSource(c, p, masks.get(c), read) for c, p in sorted(train_files.items())]
        test = [CaseSource(c, p, None, read) for c, p in sorted(test_files.items())]
        extra = ({"patients": read_patients(labels_csv, options.patient_column, train_files, self.id_column)}
                 if options.patient_column else {})
        return write_cases(train, test, table, raw_root, dataset_id, name, options.description, extra, overwrite,
                           report=report)

    def check_kind(self, paths) -> None:
        if self.expected_kind is None:
            return
        for path in paths:
            if image_kind(path) != self.expected_kind:
                raise ConversionError(f"{path}: layout {self.name!r} expects {self.expected_kind} images")
