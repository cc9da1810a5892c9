"""Issue 13, conversion: masks, classes and pixels are checked before anything is written.

Each test gives the bad input, expects one clear line (the file or case and the problem), and checks
that a dataset converted earlier at the same place is left exactly as it was."""
import logging
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mtl.conversion.detect import ConversionError, convert, convert_with_report
from tests.reliability.helpers import binary_mask, png_layout, snapshot, volume_layout, write_labels


def _labels_of(folder):
    import json
    with open(os.path.join(folder, "dataset.json")) as f:
        return json.load(f)["labels"]


def _good_dataset(tmp_path):
    """A converted dataset (id 801) whose files must survive every refused conversion below."""
    root = png_layout(str(tmp_path / "good"), {f"c{i}": binary_mask() for i in range(4)})
    folder = convert(root, str(tmp_path / "raw"), 801, "Rel")
    return folder, snapshot(folder)


# ------------------------------------------------------------------------------------- 0/255 masks
def test_0_255_masks_are_read_as_0_1_with_one_line(tmp_path, capsys):
    masks = {f"c{i}": binary_mask(fg=255) for i in range(4)}
    masks["c3"] = binary_mask(fg=1)  # one mask already 0/1: the dataset is still binary
    root = png_layout(str(tmp_path / "in"), masks)
    result = convert_with_report(root, str(tmp_path / "raw"), 802, "Bin")
    assert _labels_of(result.folder) == {"background": 0, "label_1": 1}
    for cid in masks:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(result.folder, "labelsTr", f"{cid}.nii.gz")))
        assert set(np.unique(arr)) == {0, 1}
    lines = [l for l in result.report.summary().splitlines() if "255" in l]
    assert len(lines) == 1 and "3 binary mask(s)" in lines[0] and "0/1" in lines[0]


def test_0_255_masks_with_a_declared_single_label(tmp_path):
    root = png_layout(str(tmp_path / "in"), {f"c{i}": binary_mask(fg=255) for i in range(4)})
    folder = convert(root, str(tmp_path / "raw"), 803, "BinNamed", labels=["1=lesion"])
    assert _labels_of(folder) == {"background": 0, "lesion": 1}


def test_255_with_several_declared_labels_is_refused(tmp_path):
    masks = {f"c{i}": binary_mask(fg=255) for i in range(4)}
    root = png_layout(str(tmp_path / "in"), masks)
    with pytest.raises(ConversionError, match=r"c0\.png: mask of case 'c0' has label value\(s\) \[255\] not declared"):
        convert(root, str(tmp_path / "raw"), 804, "X", labels=["1=lung", "2=heart"])


# ------------------------------------------------------------------------------------- phantom values
def test_stray_value_is_refused_naming_the_case(tmp_path):
    folder, before = _good_dataset(tmp_path)
    masks = {}
    for i in range(4):
        m = binary_mask()
        m[9:11, 9:11] = 2
        masks[f"c{i}"] = m
    masks["c2"][0, 0] = 7  # one stray pixel would have added labels 3..7
    root = png_layout(str(tmp_path / "in"), masks)
    with pytest.raises(ConversionError) as e:
        convert(root, str(tmp_path / "raw"), 801, "Rel", overwrite=True)
    msg = str(e.value)
    assert "\n" not in msg
    assert "c2.png: mask of case 'c2' has label value(s) [7]" in msg and "0..2" in msg and "--label_names" in msg
    assert snapshot(folder) == before  # the dataset converted earlier is untouched


def test_declared_labels_refuse_an_undeclared_value(tmp_path):
    masks = {f"c{i}": binary_mask() for i in range(3)}
    masks["c1"][0, 0] = 2
    root = png_layout(str(tmp_path / "in"), masks)
    with pytest.raises(ConversionError, match=r"c1\.png: mask of case 'c1' has label value\(s\) \[2\] not declared"):
        convert(root, str(tmp_path / "raw"), 805, "X", labels=["1=lesion"])


def test_consecutive_values_in_some_cases_only_are_fine(tmp_path):
    masks = {f"c{i}": binary_mask() for i in range(3)}
    masks["c0"][0:2, 0:2] = 2  # a rarer structure, no gap: 0..2 as before
    folder = convert(png_layout(str(tmp_path / "in"), masks), str(tmp_path / "raw"), 806, "Rare")
    assert _labels_of(folder) == {"background": 0, "label_1": 1, "label_2": 2}


# ------------------------------------------------------------------------------------- class spellings
def test_class_spellings_differing_by_case_are_refused(tmp_path):
    folder, before = _good_dataset(tmp_path)
    root = png_layout(str(tmp_path / "in"), {f"c{i}": binary_mask() for i in range(4)},
                      classes={"c0": "present", "c1": "Present", "c2": "absent", "c3": "absent"})
    with pytest.raises(ConversionError) as e:
        convert(root, str(tmp_path / "raw"), 801, "Rel", overwrite=True)
    msg = str(e.value)
    assert "labels.csv" in msg and "'Present'" in msg and "'present'" in msg and "case or spaces" in msg
    assert snapshot(folder) == before


def test_class_spellings_differing_by_spaces_are_refused(tmp_path):
    from nnunet_mtl.targets import TargetSpecError, read_labels_csv
    p = write_labels(str(tmp_path / "l.csv"), [["a", "no finding"], ["b", "no  finding"], ["c", "finding"]])
    with pytest.raises(TargetSpecError, match=r"l\.csv: column 'finding' spells one class two ways, "
                                              r"'no finding' \(line 2\) and 'no  finding' \(line 3\)"):
        read_labels_csv(p)


def test_class_spelled_differently_from_the_declared_one_is_named(tmp_path):
    from nnunet_mtl.targets import Target, TargetSpec, TargetSpecError, read_labels_csv
    spec = TargetSpec((Target("finding", "classification", classes=("absent", "present")),))
    p = write_labels(str(tmp_path / "l.csv"), [["a", "present"], ["b", "Present"]])
    with pytest.raises(TargetSpecError, match=r"case 'b'.*unknown class 'Present'.*differs only by case or spaces "
                                              r"from 'present'"):
        read_labels_csv(p, spec)


# ------------------------------------------------------------------------------------- NaN and constant images
def test_nan_image_is_refused_naming_the_file(tmp_path):
    folder, before = _good_dataset(tmp_path)
    rng = np.random.default_rng(1)
    images = {f"v{i}": rng.normal(size=(4, 6, 6)) for i in range(3)}
    images["v1"][2, 3, 3] = np.nan
    images["v1"][0, 0, 0] = np.inf
    root = volume_layout(str(tmp_path / "in"), images)
    with pytest.raises(ConversionError, match=r"v1\.nrrd: image of case 'v1' has 2 NaN or infinite pixel"):
        convert(root, str(tmp_path / "raw"), 801, "Rel", overwrite=True)
    assert snapshot(folder) == before


def test_nan_in_a_nifti_image_is_refused(tmp_path):
    """SimpleITK reads NaN and inf stored in NIfTI as 0; the check reads the stored values."""
    rng = np.random.default_rng(1)
    images = {f"v{i}": rng.normal(size=(4, 6, 6)) for i in range(3)}
    images["v0"][1, 1, 1] = np.nan
    root = volume_layout(str(tmp_path / "in"), images, ext=".nii.gz")
    with pytest.raises(ConversionError, match=r"v0\.nii\.gz: image of case 'v0' has 1 NaN or infinite"):
        convert(root, str(tmp_path / "raw"), 808, "NaN")
    assert not os.path.exists(tmp_path / "raw" / "Dataset808_NaN")


def test_constant_image_is_converted_with_a_warning_naming_it(tmp_path, caplog):
    rng = np.random.default_rng(1)
    images = {f"v{i}": rng.normal(size=(4, 6, 6)) for i in range(3)}
    images["v2"] = np.full((4, 6, 6), 5.0)
    root = volume_layout(str(tmp_path / "in"), images)
    with caplog.at_level(logging.WARNING):
        result = convert_with_report(root, str(tmp_path / "raw"), 807, "Const")
    assert "1 constant image(s)" in result.report.summary() and "v2.nrrd" in result.report.summary()
    assert any("v2.nrrd" in r.getMessage() and "constant" in r.getMessage() for r in caplog.records)


def test_a_second_dataset_under_the_same_id_is_refused_before_anything_is_written(tmp_path):
    """nnU-Net looks datasets up by id: two names under one id would break every later step."""
    from nnunet_mtl.conversion.detect import convert
    from nnunet_mtl.conversion.nnunet_raw import DatasetExistsError
    from nnunet_mtl.synthetic import write_radiograph_layout
    data = write_radiograph_layout(str(tmp_path / "data"), n=4, n_test=0, size=(32, 32))
    raw = str(tmp_path / "raw")
    first = convert(data, raw, 944, "First")
    before = sorted(os.listdir(raw))
    with pytest.raises(DatasetExistsError, match=r"Dataset944_First: dataset id 944 is already used"):
        convert(data, raw, 944, "Second")
    assert sorted(os.listdir(raw)) == before and os.path.isdir(first)
    assert convert(data, raw, 944, "First") == first  # the same dataset again is still a no-op
