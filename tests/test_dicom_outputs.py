"""DICOM SEG and SR for DICOM inputs: a 4-slice CT series and a 1-frame DX radiograph, written and read back."""
import os

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, DigitalXRayImageStorageForPresentation, ExplicitVRLittleEndian, generate_uid

from nnunet_mtl.conversion.dicom_series import read_dicom_series
from nnunet_mtl.outputs.dicom.source import DicomOutputError, dicom_source_files, read_sources
from nnunet_mtl.outputs.dicom.sr import read_sr_predictions
from nnunet_mtl.outputs.dicom.writer import write_dicom_outputs
from nnunet_mtl.prediction_table import make_row
from nnunet_mtl.targets import Target, TargetSpec

ROWS, COLS, N_SLICES = 6, 5, 4
COMPREHENSIVE_3D_SR = "1.2.840.10008.5.1.4.1.1.88.34"
SPACING = (0.8, 0.7)  # DICOM PixelSpacing: row spacing (y), column spacing (x)
LABELS = {"background": 0, "liver": 1, "tumour": 3}
SPEC = TargetSpec((Target("pneumoperitoneum", "classification", ("no", "yes")),
                   Target("subtype", "classification", ("a", "b", "c")),
                   Target("age", "regression", unit="d")))
ROW = make_row(SPEC, "case_007", {"pneumoperitoneum": np.array([0.07, 0.93]), "subtype": np.array([0.2, 0.5, 0.3]),
                                  "age": np.array([3.5])})


def _base(sop_class, modality, rows, cols):
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, ds.file_meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Test^Case", "P1", "", "O"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime, ds.StudyID = generate_uid(), "20260101", "120000", "1"
    ds.AccessionNumber, ds.ReferringPhysicianName, ds.Manufacturer = "A1", "", "synthetic"
    ds.Modality, ds.SeriesNumber, ds.SeriesInstanceUID = modality, 1, generate_uid()
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def write_ct_series(folder):
    """4 axial slices, 2.5 mm apart; files named out of position order so nothing relies on names."""
    os.makedirs(folder, exist_ok=True)
    series, frame, study = generate_uid(), generate_uid(), generate_uid()
    for k in range(N_SLICES):
        ds = _base(CTImageStorage, "CT", ROWS, COLS)
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID, ds.StudyInstanceUID = series, frame, study
        ds.InstanceNumber, ds.PositionReferenceIndicator = k + 1, ""
        ds.ImagePositionPatient = [-10.0, -20.0, 30.0 + 2.5 * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = list(SPACING), 2.5
        ds.RescaleSlope, ds.RescaleIntercept, ds.ImageType = 1, -1024, ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.PixelData = np.full((ROWS, COLS), 1000 + 10 * k, np.uint16).tobytes()
        ds.save_as(os.path.join(folder, f"img_{(3 * k + 1) % N_SLICES}.dcm"), enforce_file_format=True)
    return folder


def write_dx(path):
    ds = _base(DigitalXRayImageStorageForPresentation, "DX", 8, 6)
    ds.InstanceNumber, ds.PatientOrientation = 1, ["L", "F"]
    ds.ImagerPixelSpacing = ds.PixelSpacing = [0.15, 0.15]
    ds.PresentationIntentType, ds.ImageType = "FOR PRESENTATION", ["ORIGINAL", "PRIMARY"]
    ds.PixelData = np.arange(48, dtype=np.uint16).reshape(8, 6).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def ct_case(tmp_path):
    folder = write_ct_series(str(tmp_path / "ct_case"))
    image = read_dicom_series(folder)  # what conversion turns into the nnU-Net input
    mask = np.zeros(sitk.GetArrayFromImage(image).shape, np.uint8)  # (z, y, x)
    mask[1, 2:4, 1:3] = 1
    mask[2, 1:5, 0:4] = 1
    mask[2, 2:3, 1:2] = 3
    mask_image = sitk.GetImageFromArray(mask)
    mask_image.CopyInformation(image)  # the predicted mask in the converted image's geometry
    return folder, image, mask, mask_image


def _frame_source(frame):
    return frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID


def test_ct_series_seg_frames_sit_on_the_source_slices(ct_case, tmp_path):
    folder, image, mask, mask_image = ct_case
    files = dicom_source_files(folder)
    paths = write_dicom_outputs(files, mask_image, LABELS, ROW, str(tmp_path / "out"), SPEC)
    assert set(paths) == {"seg", "sr"} and all(os.path.isfile(p) for p in paths.values())

    seg = hd.seg.segread(paths["seg"])
    sources = {ds.SOPInstanceUID: ds for ds in (pydicom.dcmread(f) for f in files)}
    z_of = {uid: float(ds.ImagePositionPatient[2]) for uid, ds in sources.items()}
    assert {int(s.SegmentNumber): s.SegmentLabel for s in seg.SegmentSequence} == {1: "liver", 2: "tumour"}
    assert seg.NumberOfFrames == 2 * N_SLICES  # every segment on every source slice
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert [float(v) for v in shared.PixelMeasuresSequence[0].PixelSpacing] == list(SPACING)
    assert seg.FrameOfReferenceUID == next(iter(sources.values())).FrameOfReferenceUID
    assert (seg.Rows, seg.Columns) == (ROWS, COLS)
    frames = pydicom.dcmread(paths["seg"]).pixel_array
    origin_z = image.GetOrigin()[2]
    for i, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        uid = _frame_source(frame)
        ipp = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert ipp == [float(v) for v in sources[uid].ImagePositionPatient]
        k = int(round((z_of[uid] - origin_z) / image.GetSpacing()[2]))  # the NIfTI slice at that position
        segment = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        value = {1: 1, 2: 3}[segment]
        np.testing.assert_array_equal(frames[i], (mask[k] == value).astype(np.uint8))

    volume = seg.get_volume()  # highdicom's own geometry: every voxel row lands on the mask's slice
    assert volume.spatial_shape == mask.shape
    for i in range(N_SLICES):
        xyz = (volume.affine @ [i, 0, 0, 1])[:3]
        k = int(round((xyz[2] - origin_z) / image.GetSpacing()[2]))
        assert xyz == pytest.approx(image.TransformIndexToPhysicalPoint((0, 0, k)))
        for channel, value in enumerate((1, 3)):
            np.testing.assert_array_equal(volume.array[i, ..., channel], mask[k] == value)

    sr = pydicom.dcmread(paths["sr"])
    got = read_sr_predictions(sr)
    assert got["pneumoperitoneum"]["class"] == "yes"
    assert got["pneumoperitoneum"]["probs"] == pytest.approx({"no": 0.07, "yes": 0.93})
    assert got["subtype"]["class"] == "b" and got["subtype"]["probs"]["c"] == pytest.approx(0.3)
    assert got["age"] == {"value": 3.5, "unit": "d"}
    evidence = {r.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence
                for se in s.ReferencedSeriesSequence for r in se.ReferencedSOPSequence}
    assert evidence == set(sources)
    assert hd.sr.srread(paths["sr"]).SOPClassUID == COMPREHENSIVE_3D_SR


def test_dx_radiograph_seg_and_sr(tmp_path):
    path = write_dx(str(tmp_path / "cxr.dcm"))
    mask = np.zeros((8, 6), np.uint8)
    mask[2:5, 1:4] = 1
    paths = write_dicom_outputs(dicom_source_files(path), mask, {"background": 0, "free_air": 1}, ROW,
                                str(tmp_path / "out"), SPEC, calibrated=True)
    # highdicom 0.28's reader wants SliceThickness even without a frame of reference (not required by
    # the standard for a projection image), so the radiograph SEG is checked with pydicom.
    seg = pydicom.dcmread(paths["seg"])
    source = pydicom.dcmread(path)
    assert seg.Modality == "SEG" and seg.NumberOfFrames == 1 and (seg.Rows, seg.Columns) == (8, 6)
    assert seg.SegmentSequence[0].SegmentLabel == "free_air"
    assert _frame_source(seg.PerFrameFunctionalGroupsSequence[0]) == source.SOPInstanceUID
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert [float(v) for v in measures.PixelSpacing] == [0.15, 0.15]
    np.testing.assert_array_equal(seg.pixel_array, mask)
    assert seg.StudyInstanceUID == source.StudyInstanceUID and seg.PatientID == source.PatientID
    sr = pydicom.dcmread(paths["sr"])
    assert read_sr_predictions(sr)["pneumoperitoneum"]["class"] == "yes"
    params = [item.TextValue for item in _walk(sr.ContentSequence) if item.ValueType == "TEXT"]
    assert any("calibrated" in p for p in params)


def _walk(items):
    for item in items:
        yield item
        yield from _walk(item.get("ContentSequence", []))


def test_fractional_seg_from_class_probabilities(ct_case, tmp_path):
    folder, image, mask, _ = ct_case
    datasets = read_sources(dicom_source_files(folder))
    probs = np.zeros(mask.shape + (4,), np.float32)
    probs[..., 1] = 0.25
    probs[..., 3] = np.linspace(0, 1, mask.size).reshape(mask.shape)
    paths = write_dicom_outputs([f for f in dicom_source_files(folder)], mask, LABELS, None,
                                str(tmp_path / "out"), probabilities=probs, case_id="frac")
    assert set(paths) == {"seg"}
    seg = hd.seg.segread(paths["seg"])
    assert seg.SegmentationType == "FRACTIONAL"
    arr = pydicom.dcmread(paths["seg"]).pixel_array
    first = seg.PerFrameFunctionalGroupsSequence[0]
    k = [ds.SOPInstanceUID for ds in datasets].index(_frame_source(first))
    segment = int(first.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
    expected = probs[k, ..., {1: 1, 2: 3}[segment]]
    np.testing.assert_allclose(arr[0] / float(seg.MaximumFractionalValue), expected, atol=1 / 255)


def test_inputs_that_do_not_fit_are_refused(ct_case, tmp_path):
    folder, image, mask, _ = ct_case
    files = dicom_source_files(folder)
    with pytest.raises(DicomOutputError, match="does not match"):
        write_dicom_outputs(files, mask[:3], LABELS, None, str(tmp_path))
    shifted = sitk.GetImageFromArray(mask)
    shifted.CopyInformation(image)
    shifted.SetOrigin(tuple(np.add(image.GetOrigin(), (0, 0, 1.0))))
    with pytest.raises(DicomOutputError, match="not a slice of the mask"):
        write_dicom_outputs(files, shifted, LABELS, None, str(tmp_path))
    with pytest.raises(DicomOutputError, match=r"mask values \[2\]"):
        write_dicom_outputs(files, np.full(mask.shape, 2, np.uint8), LABELS, None, str(tmp_path))
    multi = pydicom.dcmread(files[0])
    multi.NumberOfFrames = 2
    multi.save_as(str(tmp_path / "multi.dcm"))
    with pytest.raises(DicomOutputError, match="multi-frame"):
        write_dicom_outputs([str(tmp_path / "multi.dcm")], mask, LABELS, None, str(tmp_path))
    with pytest.raises(DicomOutputError, match="region"):
        write_dicom_outputs(files, mask, {"background": 0, "whole": [1, 2]}, None, str(tmp_path))


def test_non_dicom_inputs_are_recognised(tmp_path):
    png = tmp_path / "case.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert dicom_source_files(str(png)) is None
    assert dicom_source_files(str(tmp_path / "missing")) is None
    (tmp_path / "empty").mkdir()
    assert dicom_source_files(str(tmp_path / "empty")) is None


def test_write_case_outputs_from_the_predictor_files(ct_case, tmp_path):
    folder, image, mask, mask_image = ct_case
    from nnunet_mtl.outputs.dicom.writer import write_case_outputs
    mask_file = str(tmp_path / "case_007.nii.gz")
    sitk.WriteImage(mask_image, mask_file)
    probs = np.zeros((4,) + mask.shape, np.float32)  # nnU-Net's (c, z, y, x)
    for v in (0, 1, 3):
        probs[v] = mask == v
    np.savez_compressed(tmp_path / "case_007.npz", probabilities=probs)
    paths = write_case_outputs(folder, mask_file, LABELS, ROW, str(tmp_path / "dicom"), SPEC,
                               probabilities_file=str(tmp_path / "case_007.npz"))
    seg = hd.seg.segread(paths["seg"])
    assert seg.SegmentationType == "FRACTIONAL"
    frames = pydicom.dcmread(paths["seg"]).pixel_array
    z_of = {ds.SOPInstanceUID: float(ds.ImagePositionPatient[2]) for ds in read_sources(dicom_source_files(folder))}
    for i, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
        k = int(round((z_of[_frame_source(frame)] - image.GetOrigin()[2]) / image.GetSpacing()[2]))
        value = {1: 1, 2: 3}[int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)]
        np.testing.assert_array_equal(frames[i] > 0, mask[k] == value)
    png = tmp_path / "case.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert write_case_outputs(str(png), mask_file, LABELS, ROW, str(tmp_path / "dicom"), SPEC) == {}


def test_write_case_outputs_for_a_radiograph_mask_file(tmp_path):
    from nnunet_mtl.outputs.dicom.writer import write_case_outputs
    path = write_dx(str(tmp_path / "cxr.dcm"))
    mask = np.zeros((1, 8, 6), np.uint8)  # the converted 2D case: one slice
    mask[0, 1:3, 2:5] = 1
    sitk.WriteImage(sitk.GetImageFromArray(mask), str(tmp_path / "cxr.nii.gz"))
    paths = write_case_outputs(path, str(tmp_path / "cxr.nii.gz"), {"background": 0, "free_air": 1}, None,
                               str(tmp_path / "dicom"))
    np.testing.assert_array_equal(pydicom.dcmread(paths["seg"]).pixel_array, mask[0])
    sitk.WriteImage(sitk.GetImageFromArray(mask[0].T.copy()), str(tmp_path / "bad.nii.gz"))
    with pytest.raises(DicomOutputError, match="does not match"):
        write_case_outputs(path, str(tmp_path / "bad.nii.gz"), {"background": 0, "free_air": 1}, None, str(tmp_path))


def test_anonymised_sources_without_type2_attributes_still_work(tmp_path):
    folder = write_ct_series(str(tmp_path / "anon"))
    files = dicom_source_files(folder)
    for f in files:
        ds = pydicom.dcmread(f)
        for kw in ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
                   "AccessionNumber", "ReferringPhysicianName"):
            delattr(ds, kw)
        ds.save_as(f)
    mask = np.zeros((N_SLICES, ROWS, COLS), np.uint8)
    paths = write_dicom_outputs(files, mask, LABELS, ROW, str(tmp_path / "out"), SPEC)
    assert hd.seg.segread(paths["seg"]).PatientName == "" and os.path.isfile(paths["sr"])
    assert "PatientName" not in pydicom.dcmread(files[0])  # the sources are never modified
    ds = pydicom.dcmread(files[0])
    del ds.SeriesInstanceUID
    ds.save_as(str(tmp_path / "no_series.dcm"))
    with pytest.raises(DicomOutputError, match="no SeriesInstanceUID"):
        write_dicom_outputs([str(tmp_path / "no_series.dcm")], mask[:1], LABELS, None, str(tmp_path))


def test_sr_carries_the_review_columns_and_reads_them_back(tmp_path):
    from nnunet_mtl import case_checks
    from nnunet_mtl.outputs.dicom.sr import read_sr_review
    path = write_dx(str(tmp_path / "cxr.dcm"))
    outputs = {"pneumoperitoneum": np.array([0.45, 0.55]), "subtype": np.array([0.2, 0.5, 0.3]),
               "age": np.array([3.5]), case_checks.RAW_SEG_QUALITY: np.array([0.31]),
               case_checks.RAW_FEATURES: np.array([2.5])}
    review = {"pneumoperitoneum_set": "no|yes", "subtype_set": "b", "age_low": "2.5", "age_high": "5.0",
              "conformal_coverage": "0.9", "needs_review": "yes"}
    row = {k: str(v) for k, v in make_row(SPEC, "case_r", outputs, review=review).items()}  # as read from the csv
    paths = write_dicom_outputs(dicom_source_files(path), None, {}, row, str(tmp_path / "out"), SPEC)
    sr = hd.sr.srread(paths["sr"])  # highdicom parses it as a valid Comprehensive 3D SR
    got = read_sr_predictions(sr)
    assert got["pneumoperitoneum"]["set"] == ["no", "yes"] and got["subtype"]["set"] == ["b"]
    assert got["age"] == pytest.approx({"value": 3.5, "unit": "d", "low": 2.5, "high": 5.0})
    assert read_sr_review(sr) == {"needs_review": "yes", "seg_quality_flag": "yes", "ood_flag": "yes",
                                  "seg_quality": pytest.approx(0.31), "ood_score": pytest.approx(2.5),
                                  "conformal_coverage": "0.9"}
    flags = [i for i in _walk(sr.ContentSequence) if i.ValueType == "CODE"
             and i.ConceptNameCodeSequence[0].CodeMeaning.startswith("Needs review")]
    assert flags[0].ConceptCodeSequence[0].CodingSchemeDesignator == "SCT"  # SCT Yes, not a private code
    # an older table (no review columns) or unreadable cells: the SR is still written, without those items
    old = {k: v for k, v in ROW.items() if k not in ("needs_review", "age_low", "age_high")}
    bad = dict(row, seg_quality="n/a", age_low="-inf", ood_flag="maybe", subtype_set="")
    for i, r in enumerate((old, bad)):
        sr = hd.sr.srread(write_dicom_outputs(dicom_source_files(path), None, {}, r, str(tmp_path / f"o{i}"),
                                              SPEC)["sr"])
        assert read_sr_predictions(sr)["age"] == {"value": 3.5, "unit": "d"}
    assert read_sr_review(sr) == {"needs_review": "yes", "seg_quality_flag": "yes", "ood_score": pytest.approx(2.5),
                                  "conformal_coverage": "0.9"}
    assert "set" not in read_sr_predictions(sr)["subtype"]
