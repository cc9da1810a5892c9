"""Conversion of every input layout to nnU-Net raw format, with small generated files."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from nnunet_mtl.conversion.detect import ConversionError, convert, convert_with_report, detect_layout
from nnunet_mtl.conversion.nnunet_raw import DatasetExistsError
from nnunet_mtl.synthetic import write_pancreas_layout, write_radiograph_layout

TINY = (8, 16, 16)


def _dataset_json(folder):
    with open(os.path.join(folder, "dataset.json")) as f:
        return json.load(f)


def _read(path):
    return sitk.ReadImage(path)


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


# ------------------------------------------------------------------------------------------ pancreas
@pytest.fixture
def pancreas(tmp_path):
    return write_pancreas_layout(str(tmp_path / "pancreas"), n_train=6, n_val=3, n_test=2, shape=TINY)


def test_pancreas_layout(pancreas, tmp_path):
    assert detect_layout(pancreas) == "pancreas"
    folder = convert(pancreas, str(tmp_path / "raw"), 501, "Pan")
    dj = _dataset_json(folder)
    assert dj["labels"] == {"background": 0, "pancreas": 1, "lesion": 2}
    assert dj["channel_names"] == {"0": "CT"}
    assert dj["numTraining"] == 9
    mtl = dj["mtl"]
    assert mtl["targets"][0]["name"] == "subtype"
    assert mtl["targets"][0]["classes"] == ["subtype0", "subtype1", "subtype2"]
    assert mtl["regions"] == {"whole": [1, 2], "lesion": [2]}
    val_dir = os.path.join(pancreas, "validation")
    expected_val = sorted(f[:-len(".nii.gz")] for d in os.listdir(val_dir) for f in os.listdir(os.path.join(val_dir, d))
                          if not f.endswith("_0000.nii.gz"))
    assert mtl["fixed_validation"] == expected_val
    for cls in os.listdir(os.path.join(pancreas, "train")):  # class comes from the folder
        for f in os.listdir(os.path.join(pancreas, "train", cls)):
            if f.endswith("_0000.nii.gz"):
                assert mtl["cases"][f[:-len("_0000.nii.gz")]]["subtype"] == cls
    assert len(os.listdir(os.path.join(folder, "imagesTs"))) == 2
    img = _read(os.path.join(folder, "imagesTr", "quiz_000_0000.nii.gz"))
    seg = _read(os.path.join(folder, "labelsTr", "quiz_000.nii.gz"))
    assert img.GetSize() == TINY[::-1] and img.GetSpacing() == (1.0, 1.0, 2.0)
    assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1, 2}


def test_pancreas_rerun_is_noop_and_different_dataset_refused(pancreas, tmp_path):
    raw = str(tmp_path / "raw")
    folder = convert(pancreas, raw, 502, "Pan")
    stamp = os.path.getmtime(os.path.join(folder, "dataset.json"))
    assert convert(pancreas, raw, 502, "Pan") == folder
    assert os.path.getmtime(os.path.join(folder, "dataset.json")) == stamp
    src = os.path.join(pancreas, "train", "subtype0")
    one_case = sorted(os.listdir(src))[:2]  # NAME.nii.gz and NAME_0000.nii.gz
    for f in one_case:  # one more case: now a different dataset
        shutil.copy(os.path.join(src, f), os.path.join(src, "extra_" + f))
    with pytest.raises(DatasetExistsError):
        convert(pancreas, raw, 502, "Pan")
    convert(pancreas, raw, 502, "Pan", overwrite=True)
    assert _dataset_json(folder)["numTraining"] == 10


def test_pancreas_unknown_class_folder(pancreas, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([{"name": "subtype", "kind": "classification",
                                 "classes": ["subtype0", "subtype1", "subtype2"]}]))
    odd = os.path.join(pancreas, "train", "other")
    shutil.copytree(os.path.join(pancreas, "train", "subtype1"), odd)
    with pytest.raises(ConversionError, match="other"):
        convert(pancreas, str(tmp_path / "raw"), 503, "Pan", spec_json=str(spec))


def test_pancreas_validation_only_class_refused(pancreas, tmp_path):
    os.rename(os.path.join(pancreas, "validation", "subtype2"), os.path.join(pancreas, "validation", "subtype9"))
    with pytest.raises(ConversionError, match="subtype9"):
        convert(pancreas, str(tmp_path / "raw"), 504, "Pan")


def test_pancreas_missing_mask(pancreas, tmp_path):
    folder = os.path.join(pancreas, "train", "subtype1")
    mask = sorted(f for f in os.listdir(folder) if not f.endswith("_0000.nii.gz"))[0]
    os.remove(os.path.join(folder, mask))
    with pytest.raises(ConversionError, match=mask[:-len(".nii.gz")]):
        convert(pancreas, str(tmp_path / "raw"), 505, "Pan")


# ------------------------------------------------------------------------------------- generic 2D PNG
@pytest.fixture
def pngs(tmp_path):
    return write_radiograph_layout(str(tmp_path / "cxr"), n=8, n_test=2, size=(32, 32))


def test_generic_png_layout(pngs, tmp_path):
    assert detect_layout(pngs) == "generic"
    folder = convert(pngs, str(tmp_path / "raw"), 511, "Cxr")
    dj = _dataset_json(folder)
    assert dj["labels"] == {"background": 0, "label_1": 1, "label_2": 2}
    assert dj["channel_names"] == {"0": "rescale_to_0_1"}
    assert dj["mtl"]["targets"][0]["classes"] == ["absent", "present"]
    assert dj["mtl"]["cases"]["cxr_001"]["finding"] == "present"
    img = _read(os.path.join(folder, "imagesTr", "cxr_000_0000.nii.gz"))
    assert img.GetDimension() == 2 and img.GetSize() == (32, 32)
    assert img.GetPixelID() == sitk.sitkFloat32
    assert sorted(os.listdir(os.path.join(folder, "imagesTs"))) == ["cxr_008_0000.nii.gz", "cxr_009_0000.nii.gz"]


def test_percentile_clipping(pngs, tmp_path):
    raw = np.asarray(Image.open(os.path.join(pngs, "images", "cxr_000.png")), np.float32)
    folder = convert(pngs, str(tmp_path / "raw"), 512, "Cxr", clip_percentiles=(5, 95))
    out = sitk.GetArrayFromImage(_read(os.path.join(folder, "imagesTr", "cxr_000_0000.nii.gz")))
    lo, hi = np.percentile(raw, [5, 95])
    assert out.min() == pytest.approx(lo) and out.max() == pytest.approx(hi)


def test_patient_column_kept_out_of_targets(pngs, tmp_path):
    csv_path = os.path.join(pngs, "labels.csv")
    with open(csv_path) as f:
        rows = list(csv.reader(f))
    _write_csv(csv_path, rows[0] + ["patient"], [r + [f"p{i // 2}"] for i, r in enumerate(rows[1:])])
    folder = convert(pngs, str(tmp_path / "raw"), 513, "Cxr", patient_column="patient")
    mtl = _dataset_json(folder)["mtl"]
    assert [t["name"] for t in mtl["targets"]] == ["finding"]
    assert mtl["patients"]["cxr_000"] == "p0" and mtl["patients"]["cxr_003"] == "p1"


def test_unknown_class_name_in_csv(pngs, tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"targets": [{"name": "finding", "kind": "classification",
                                             "classes": ["absent", "present"]}]}))
    csv_path = os.path.join(pngs, "labels.csv")
    text = open(csv_path).read().replace("cxr_003,present", "cxr_003,maybe")
    open(csv_path, "w").write(text)
    with pytest.raises(ConversionError, match="cxr_003"):
        convert(pngs, str(tmp_path / "raw"), 514, "Cxr", spec_json=str(spec))


def test_generic_missing_mask(pngs, tmp_path):
    os.remove(os.path.join(pngs, "masks", "cxr_005.png"))
    with pytest.raises(ConversionError, match="cxr_005"):
        convert(pngs, str(tmp_path / "raw"), 515, "Cxr")


def test_rgb_png_becomes_grey(tmp_path):
    root = tmp_path / "rgb"
    (root / "images").mkdir(parents=True)
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 100, 50, 200
    for cid in ("a", "b"):
        Image.fromarray(rgb).save(root / "images" / f"{cid}.png")
    _write_csv(root / "labels.csv", ["case_id", "y"], [["a", "0"], ["b", "1"]])
    folder = convert(str(root), str(tmp_path / "raw"), 516, "Rgb", clip_percentiles=None, grey=True)
    out = sitk.GetArrayFromImage(_read(os.path.join(folder, "imagesTr", "a_0000.nii.gz")))
    assert out.shape == (8, 8)
    assert np.allclose(out, 0.299 * 100 + 0.587 * 50 + 0.114 * 200, atol=1e-3)


# ------------------------------------------------------------------------------------------ DICOM 2D
def _dicom_meta(sop_class):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.PatientID, ds.StudyInstanceUID = "anon", "1.2.3.4"
    return ds


def _set_pixels(ds, pixels, signed=False):
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.BitsAllocated, ds.BitsStored, ds.HighBit = 1, 16, 16, 15
    ds.PixelRepresentation = int(signed)
    ds.PixelData = pixels.astype(np.int16 if signed else np.uint16).tobytes()


def write_dicom_2d(path, pixels, modality, photometric, spacing_tag, spacing, slope=1.0, intercept=0.0):
    sop = {"CR": "1.2.840.10008.5.1.4.1.1.1", "DX": "1.2.840.10008.5.1.4.1.1.1.1"}[modality]
    ds = _dicom_meta(sop)
    ds.Modality, ds.PhotometricInterpretation = modality, photometric
    setattr(ds, spacing_tag, [str(s) for s in spacing])
    ds.RescaleSlope, ds.RescaleIntercept = str(slope), str(intercept)
    _set_pixels(ds, pixels)
    ds.save_as(path, enforce_file_format=True)


def test_dicom_2d_radiographs(tmp_path):
    root = tmp_path / "dcm"
    (root / "images").mkdir(parents=True)
    raw = (np.arange(12 * 10).reshape(12, 10) * 7 % 1000 + 10).astype(np.uint16)
    write_dicom_2d(str(root / "images" / "cr1.dcm"), raw, "CR", "MONOCHROME2", "PixelSpacing", (0.2, 0.3),
                   slope=2.0, intercept=-100.0)
    write_dicom_2d(str(root / "images" / "dx1.dcm"), raw, "DX", "MONOCHROME1", "ImagerPixelSpacing", (0.15, 0.15))
    _write_csv(root / "labels.csv", ["case_id", "finding"], [["cr1", "no"], ["dx1", "yes"]])
    folder = convert(str(root), str(tmp_path / "raw"), 521, "Dcm", layout="radiograph", clip_percentiles=None)
    cr = _read(os.path.join(folder, "imagesTr", "cr1_0000.nii.gz"))
    dx = _read(os.path.join(folder, "imagesTr", "dx1_0000.nii.gz"))
    assert cr.GetSpacing() == pytest.approx((0.3, 0.2))  # sitk (x, y); DICOM gives (row=y, column=x)
    assert dx.GetSpacing() == pytest.approx((0.15, 0.15))
    assert np.allclose(sitk.GetArrayFromImage(cr), raw * 2.0 - 100.0)
    inverted = sitk.GetArrayFromImage(dx)
    assert np.allclose(inverted, raw.max() + raw.min() - raw.astype(np.float32))
    assert inverted[raw == raw.max()].max() == raw.min()  # brightest stored pixel became the darkest


# -------------------------------------------------------------------------------------- DICOM series
def write_dicom_series(folder, volume, spacing_zyx, origin_xyz, intercept=-1024.0):
    from pydicom.uid import generate_uid
    os.makedirs(folder, exist_ok=True)
    series, frame = generate_uid(), generate_uid()
    for k, plane in enumerate(volume):
        ds = _dicom_meta("1.2.840.10008.5.1.4.1.1.2")
        ds.Modality, ds.PhotometricInterpretation = "CT", "MONOCHROME2"
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID, ds.InstanceNumber = series, frame, k + 1
        ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
        ds.ImagePositionPatient = [str(origin_xyz[0]), str(origin_xyz[1]), str(origin_xyz[2] + k * spacing_zyx[0])]
        ds.PixelSpacing = [str(spacing_zyx[1]), str(spacing_zyx[2])]
        ds.SliceThickness = str(spacing_zyx[0])
        ds.RescaleSlope, ds.RescaleIntercept = "1", str(intercept)
        _set_pixels(ds, plane, signed=True)
        ds.save_as(os.path.join(folder, f"slice_{k:03d}.dcm"), enforce_file_format=True)


def test_dicom_series_keeps_geometry(tmp_path):
    root = tmp_path / "series"
    rng = np.random.default_rng(0)
    spacing, origin = (2.5, 0.8, 0.7), (-10.0, 20.0, 30.0)
    vols = {}
    for cid in ("ct_a", "ct_b"):
        vols[cid] = rng.integers(0, 2000, (4, 6, 5)).astype(np.int16)
        write_dicom_series(str(root / "images" / cid), vols[cid], spacing, origin)
    _write_csv(root / "labels.csv", ["case_id", "grade"], [["ct_a", "low"], ["ct_b", "high"]])
    folder = convert(str(root), str(tmp_path / "raw"), 531, "Series", layout="dicom_series")
    img = _read(os.path.join(folder, "imagesTr", "ct_a_0000.nii.gz"))
    assert img.GetSize() == (5, 6, 4)
    assert img.GetSpacing() == pytest.approx(spacing[::-1])
    assert img.GetOrigin() == pytest.approx(origin)
    assert np.allclose(sitk.GetArrayFromImage(img), vols["ct_a"] - 1024.0)
    assert _dataset_json(folder)["channel_names"] == {"0": "CT"}


# ------------------------------------------------------------------------------- NIfTI mask checks
def make_nifti_layout(root, n=4, spacing=(1.0, 1.0, 2.0), origin=(0.0, 0.0, 0.0)):
    """images/case_i.nii.gz + masks/case_i.nii.gz + labels.csv, geometry in sitk (x, y, z) order."""
    rng = np.random.default_rng(1)
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    rows = []
    for i in range(n):
        cid = f"case_{i:02d}"
        img = sitk.GetImageFromArray(rng.normal(size=(4, 8, 8)).astype(np.float32))
        mask = sitk.GetImageFromArray((rng.random((4, 8, 8)) > 0.5).astype(np.uint8))
        for im in (img, mask):
            im.SetSpacing(spacing)
            im.SetOrigin(origin)
        sitk.WriteImage(img, os.path.join(root, "images", f"{cid}.nii.gz"))
        sitk.WriteImage(mask, os.path.join(root, "masks", f"{cid}.nii.gz"))
        rows.append([cid, "a" if i % 2 else "b", str(40.5 + 3.1 * i)])
    _write_csv(os.path.join(root, "labels.csv"), ["case_id", "kind", "age"], rows)
    return root


def _rewrite_mask(root, cid, fn):
    path = os.path.join(root, "masks", f"{cid}.nii.gz")
    mask = sitk.ReadImage(path)
    sitk.WriteImage(fn(mask), path)


def test_non_integer_mask_rounded_and_reported(tmp_path):
    root = make_nifti_layout(str(tmp_path / "nii"))

    def to_float(mask):
        arr = sitk.GetArrayFromImage(mask).astype(np.float32)
        arr[0, 0, :3] = [0.9999, 1.0002, 0.2]
        arr[1, 1, 1] = 1.6
        out = sitk.GetImageFromArray(arr)
        out.CopyInformation(mask)
        return out
    _rewrite_mask(root, "case_01", to_float)
    result = convert_with_report(root, str(tmp_path / "raw"), 541, "Nii")
    assert result.report.rounded_voxels == {"case_01": 4}
    assert "rounded 4" in result.report.summary()
    seg = sitk.GetArrayFromImage(_read(os.path.join(result.folder, "labelsTr", "case_01.nii.gz")))
    assert list(seg[0, 0, :3]) == [1, 1, 0] and seg[1, 1, 1] == 2
    dj = _dataset_json(result.folder)
    assert dj["labels"] == {"background": 0, "label_1": 1, "label_2": 2}
    assert dj["mtl"]["targets"][1] == {"name": "age", "kind": "regression", "weight": 1.0, "allow_missing": False}


def test_geometry_mismatch_names_case(tmp_path):
    root = make_nifti_layout(str(tmp_path / "nii"))

    def shift(mask):
        mask.SetSpacing((1.0, 1.0, 2.5))
        return mask
    _rewrite_mask(root, "case_02", shift)
    with pytest.raises(ConversionError, match=r"case_02.*spacing"):
        convert(root, str(tmp_path / "raw"), 542, "Nii")


def test_size_mismatch_names_case(tmp_path):
    root = make_nifti_layout(str(tmp_path / "nii"))
    _rewrite_mask(root, "case_03", lambda m: m[:, :, :3])
    with pytest.raises(ConversionError, match=r"case_03.*size"):
        convert(root, str(tmp_path / "raw"), 543, "Nii")


def test_tiny_origin_difference_copies_image_geometry(tmp_path):
    root = make_nifti_layout(str(tmp_path / "nii"), origin=(5.0, -3.0, 12.0))

    def nudge(mask):
        mask.SetOrigin((5.0 + 1e-6, -3.0, 12.0 - 2e-6))
        return mask
    _rewrite_mask(root, "case_00", nudge)
    result = convert_with_report(root, str(tmp_path / "raw"), 544, "Nii")
    assert list(result.report.geometry_copied) == [os.path.join(root, "masks", "case_00.nii.gz")]
    seg = _read(os.path.join(result.folder, "labelsTr", "case_00.nii.gz"))
    img = _read(os.path.join(result.folder, "imagesTr", "case_00_0000.nii.gz"))
    assert seg.GetOrigin() == img.GetOrigin()
    assert img.GetOrigin() == pytest.approx((5.0, -3.0, 12.0))


def test_resampling_to_target_spacing(tmp_path):
    root = make_nifti_layout(str(tmp_path / "nii"), spacing=(1.0, 1.0, 2.0))
    folder = convert(root, str(tmp_path / "raw"), 545, "Nii", target_spacing=(2.0, 2.0, 2.0))
    img = _read(os.path.join(folder, "imagesTr", "case_00_0000.nii.gz"))
    seg = _read(os.path.join(folder, "labelsTr", "case_00.nii.gz"))
    assert img.GetSize() == seg.GetSize() == (4, 4, 4)
    assert seg.GetSpacing() == (2.0, 2.0, 2.0)
    assert set(np.unique(sitk.GetArrayFromImage(seg))) <= {0, 1}


def test_multichannel_names_grouped(tmp_path):
    root = make_nifti_layout(str(tmp_path / "nii"), n=2)
    for cid in ("case_00", "case_01"):
        src = os.path.join(root, "images", f"{cid}.nii.gz")
        shutil.copy(src, os.path.join(root, "images", f"{cid}_0001.nii.gz"))
        os.rename(src, os.path.join(root, "images", f"{cid}_0000.nii.gz"))
    folder = convert(root, str(tmp_path / "raw"), 546, "Nii", channel_names={"0": "T1", "1": "T2"})
    assert sorted(os.listdir(os.path.join(folder, "imagesTr")))[:2] == ["case_00_0000.nii.gz", "case_00_0001.nii.gz"]
    assert _dataset_json(folder)["channel_names"] == {"0": "T1", "1": "T2"}


def test_undetectable_layout(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConversionError, match="layout"):
        detect_layout(str(tmp_path / "empty"))
