"""Clinical outputs wired into training and prediction: fold calibration, calibrated predictions.csv,
DICOM SEG + SR for DICOM inputs (a CT series through a 3D model, a DX radiograph through a 2D one)
and the review pages; tiny models trained by real nnU-Net (tests/conftest.py)."""
import csv
import glob
import json
import os
import shutil
from html.parser import HTMLParser

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.uid import CTImageStorage, DigitalXRayImageStorageForPresentation, generate_uid

from nnunet_mtl import prediction_table
from nnunet_mtl.calibration.store import FoldCalibration
from nnunet_mtl.calibration.temperature import apply_temperature
from nnunet_mtl.cli import predict as predict_cli
from nnunet_mtl.dataset_spec import targets_from_plans
from nnunet_mtl.outputs.dicom.sr import read_sr_predictions
from nnunet_mtl.inference.folders import predict_folder
from nnunet_mtl.inference.loader import load_predictor
from tests.test_dicom_outputs import _base as dicom_instance

pytestmark = pytest.mark.timeout(900)
T = 3.0


def read_rows(path):
    with open(path) as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def spec_of(model_dir):
    return targets_from_plans(json.load(open(os.path.join(model_dir, "plans.json"))))


# ------------------------------------------------------------------------------- DICOM inputs from test images
def _dicom_base(sop_class, modality, arr):
    """A minimal DICOM instance (the same header test_dicom_outputs builds) holding ``arr``."""
    ds = dicom_instance(sop_class, modality, *arr.shape)
    ds.PixelData = np.ascontiguousarray(arr, np.uint16).tobytes()
    return ds


def nifti_to_ct_series(nifti, folder):
    """The test volume as a CT series (one file per slice, named against position order)."""
    image = sitk.ReadImage(nifti)
    vol = sitk.GetArrayFromImage(image).astype(np.float64)
    sx, sy, sz = image.GetSpacing()
    ox, oy, oz = image.GetOrigin()
    stored = np.clip(np.round(vol + 1024), 0, 65535)
    os.makedirs(folder, exist_ok=True)
    series, frame, study = generate_uid(), generate_uid(), generate_uid()
    for k in range(vol.shape[0]):
        ds = _dicom_base(CTImageStorage, "CT", stored[k])
        ds.SeriesInstanceUID, ds.FrameOfReferenceUID, ds.StudyInstanceUID = series, frame, study
        ds.InstanceNumber, ds.PositionReferenceIndicator = k + 1, ""
        ds.ImagePositionPatient = [ox, oy, oz + sz * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [sy, sx], sz
        ds.RescaleSlope, ds.RescaleIntercept, ds.ImageType = 1, -1024, ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.save_as(os.path.join(folder, f"slice_{(vol.shape[0] - k):03d}.dcm"), enforce_file_format=True)
    return vol.shape


def nifti_to_dx(nifti, path):
    arr = np.squeeze(sitk.GetArrayFromImage(sitk.ReadImage(nifti))).astype(np.float64)
    arr = np.round((arr - arr.min()) / max(np.ptp(arr), 1e-6) * 4095)
    ds = _dicom_base(DigitalXRayImageStorageForPresentation, "DX", arr)
    ds.InstanceNumber, ds.PatientOrientation = 1, ["L", "F"]
    ds.ImagerPixelSpacing = ds.PixelSpacing = [0.5, 0.5]
    ds.PresentationIntentType, ds.ImageType = "FOR PRESENTATION", ["ORIGINAL", "PRIMARY"]
    ds.save_as(path, enforce_file_format=True)
    return arr.shape


# ------------------------------------------------------------------------------- calibration
def test_training_writes_the_fold_calibration(trained_2d):
    fold = os.path.join(trained_2d, "fold_0")
    calibration = FoldCalibration.load(fold)
    assert calibration is not None
    assert set(calibration.fits) == {t.name for t in spec_of(trained_2d).classification_targets}
    rows = read_rows(os.path.join(fold, "validation", "predictions.csv"))
    assert {r[prediction_table.CALIBRATED_COLUMN] for r in rows.values()} == {"no"}  # fitted on raw probabilities
    from nnunet_mtl.calibration.conformal_store import load_fold
    conformal = load_fold(fold)  # the trainer's final validation writes the conformal scores too
    assert set(conformal["targets"]) == {t.name for t in spec_of(trained_2d)}


def test_predictions_csv_is_calibrated_with_the_folds_temperature(trained_2d, dataset_2d, tmp_path):
    model = str(tmp_path / "model")
    shutil.copytree(trained_2d, model, ignore=shutil.ignore_patterns("validation", "*.png"))
    spec = spec_of(model)
    fits = {t.name: {"temperature": T, "n_cases": 20, "nll_before": 1.0, "nll_after": 0.5, "fitted": True}
            for t in spec.classification_targets}
    with open(os.path.join(model, "fold_0", "calibration.json"), "w") as f:
        json.dump({"method": "temperature_scaling", "targets": fits}, f)
    images = os.path.join(dataset_2d.raw_folder, "imagesTs")
    predictor = load_predictor(model, folds=[0], use_mirroring=False, backend="torch")
    assert predictor.calibration.temperatures == {t.name: pytest.approx(T) for t in spec.classification_targets}
    calibrated = read_rows(predict_folder(predictor, images, str(tmp_path / "cal")))
    predictor.calibration = None  # what --no_calibration does
    raw = read_rows(predict_folder(predictor, images, str(tmp_path / "raw")))
    assert set(raw) == set(calibrated) and raw
    for cid in raw:
        assert raw[cid][prediction_table.CALIBRATED_COLUMN] == "no"
        assert calibrated[cid][prediction_table.CALIBRATED_COLUMN] == "yes"
        for t in spec.classification_targets:
            cols = [prediction_table.prob_column(t.name, c) for c in t.classes]
            p_raw = np.array([float(raw[cid][c]) for c in cols])
            p_cal = np.array([float(calibrated[cid][c]) for c in cols])
            np.testing.assert_allclose(p_cal, apply_temperature(p_raw, T), atol=1e-6)
            assert calibrated[cid][t.name] == raw[cid][t.name]  # temperature scaling keeps the class
            assert p_cal.max() <= p_raw.max() + 1e-9  # T > 1 softens
    # the calibrated table still reads (evaluation's header parsing skips the flag column)
    header = list(next(iter(calibrated.values())))
    assert prediction_table.spec_from_header(header).names == spec.names


def test_a_fold_too_small_to_fit_a_temperature_says_its_rows_are_not_calibrated(trained_2d, dataset_2d, tmp_path):
    """The tiny fold has too few validation cases: its calibration.json keeps T = 1 (fitted: false), so no row may
    say calibrated, and the probabilities are the raw ones."""
    calibration = FoldCalibration.load(os.path.join(trained_2d, "fold_0"))
    assert calibration.fits and not any(fit.fitted for fit in calibration.fits.values())
    predictor = load_predictor(trained_2d, folds=[0], use_mirroring=False, backend="torch")
    assert predictor.calibration is None and not predictor.outputs_calibrated
    rows = read_rows(predict_folder(predictor, os.path.join(dataset_2d.raw_folder, "imagesTs"), str(tmp_path / "p")))
    assert rows and {r[prediction_table.CALIBRATED_COLUMN] for r in rows.values()} == {"no"}


def test_a_merge_keeps_each_rows_calibration_flag(tmp_path):
    from nnunet_mtl.inference.record import merge_into_folder
    from nnunet_mtl.targets import Target, TargetSpec
    spec = TargetSpec((Target("finding", "classification", ("no", "yes")),))
    merge_into_folder(str(tmp_path), spec, {"a": {"finding": np.array([0.4, 0.6])}}, calibrated=True)
    path = merge_into_folder(str(tmp_path), spec, {"b": {"finding": np.array([0.9, 0.1])}}, calibrated=False)
    entries = prediction_table.read(path, spec)
    assert entries["a"]["calibrated"] and not entries["b"]["calibrated"]


# ------------------------------------------------------------------------------- DICOM outputs
def test_ct_series_through_a_3d_model_gives_seg_and_sr(trained_3d, dataset_3d_resenc, tmp_path):
    test_image = sorted(glob.glob(os.path.join(dataset_3d_resenc.raw_folder, "imagesTs", "*_0000.nii.gz")))[0]
    inputs = tmp_path / "in"
    shape = nifti_to_ct_series(test_image, str(inputs / "ct_case"))
    shutil.copyfile(test_image, inputs / "nifti_case.nii.gz")  # not DICOM: skipped with one line
    out = tmp_path / "out"
    assert predict_cli.main(["-i", str(inputs), "-o", str(out), "-m", trained_3d, "-f", "0", "-device", "cpu",
                             "--disable_tta", "--dicom_outputs"]) == 0
    assert sorted(os.listdir(out / "dicom")) == ["ct_case"]
    seg_path, sr_path = out / "dicom" / "ct_case" / "ct_case_seg.dcm", out / "dicom" / "ct_case" / "ct_case_sr.dcm"
    seg = hd.seg.segread(str(seg_path))
    labels = json.load(open(os.path.join(trained_3d, "dataset.json")))["labels"]
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [k for k, v in labels.items() if v != 0]
    # frames sit on the source slices (same positions, each referencing its slice's SOP instance) and
    # equal nnU-Net's NIfTI mask on the slice at that patient position
    sources = {ds.SOPInstanceUID: ds for ds in map(pydicom.dcmread, glob.glob(str(inputs / "ct_case" / "*.dcm")))}
    assert len(sources) == shape[0]
    mask_image = sitk.ReadImage(str(out / "ct_case.nii.gz"))
    mask = sitk.GetArrayFromImage(mask_image)
    assert mask.shape == shape
    values = [v for v in labels.values() if v != 0]
    frames = pydicom.dcmread(str(seg_path)).pixel_array.reshape(-1, *shape[1:])
    seen = set()
    for pixels, frame in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in sources[uid].ImagePositionPatient], atol=1e-3)
        k = int(round(mask_image.TransformPhysicalPointToContinuousIndex(position)[2]))
        number = int(frame.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        np.testing.assert_array_equal(pixels > 0, mask[k] == values[number - 1], err_msg=f"slice {k}, segment {number}")
        seen.add((k, number))
    for k in range(shape[0]):  # frames left out must be empty in the mask
        for number, value in enumerate(values, start=1):
            assert (k, number) in seen or not (mask[k] == value).any()
    rows = read_rows(out / "predictions.csv")
    sr = read_sr_predictions(pydicom.dcmread(str(sr_path)))
    for t in spec_of(trained_3d):
        if t.is_classification:
            assert sr[t.name]["class"] == rows["ct_case"][t.name]
            for c in t.classes:
                expected = float(rows["ct_case"][prediction_table.prob_column(t.name, c)])
                assert sr[t.name]["probs"][c] == pytest.approx(expected, abs=1e-6)


def dx_and_nifti_inputs(dataset_2d, tmp_path):
    """The 2D test cases as inputs: the first as a DX radiograph (cxr.dcm), the others as NIfTI; (folder, shape)."""
    tests = sorted(glob.glob(os.path.join(dataset_2d.raw_folder, "imagesTs", "*_0000.nii.gz")))
    inputs = tmp_path / "in"
    inputs.mkdir()
    shape = nifti_to_dx(tests[0], str(inputs / "cxr.dcm"))
    for p in tests[1:]:
        shutil.copyfile(p, inputs / os.path.basename(p).replace("_0000", ""))
    return inputs, shape


def test_dx_radiograph_through_a_2d_model_gives_seg_sr_and_a_report(trained_2d, dataset_2d, tmp_path, capsys):
    inputs, shape = dx_and_nifti_inputs(dataset_2d, tmp_path)
    out = tmp_path / "out"
    assert predict_cli.main(["-i", str(inputs), "-o", str(out), "-m", trained_2d, "-f", "0", "-device", "cpu",
                             "--disable_tta", "--dicom_outputs", "--report"]) == 0
    printed = capsys.readouterr().out
    rows = read_rows(out / "predictions.csv")
    others = sorted(set(rows) - {"cxr"})
    skipped = next(line for line in printed.splitlines() if "not DICOM" in line)
    assert others and skipped.startswith(f"{len(others)} case(s)") and all(c in skipped for c in others)
    assert sorted(os.listdir(out / "dicom")) == ["cxr"]
    seg = pydicom.dcmread(str(out / "dicom" / "cxr" / "cxr_seg.dcm"))
    source = pydicom.dcmread(str(inputs / "cxr.dcm"))
    labels = json.load(open(os.path.join(trained_2d, "dataset.json")))["labels"]
    assert (seg.Rows, seg.Columns) == shape
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [k for k, v in labels.items() if v != 0]
    per_frame = seg.PerFrameFunctionalGroupsSequence
    assert {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID for f in per_frame} \
        == {source.SOPInstanceUID}
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    mask = np.squeeze(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "cxr.nii.gz"))))
    pixels = seg.pixel_array.reshape(-1, *shape)
    numbers = [int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber) for f in per_frame]
    for frame, number in zip(pixels, numbers):
        value = [v for v in labels.values() if v != 0][number - 1]
        np.testing.assert_array_equal(frame > 0, mask == value)
    sr = read_sr_predictions(pydicom.dcmread(str(out / "dicom" / "cxr" / "cxr_sr.dcm")))
    for t in spec_of(trained_2d).classification_targets:
        assert sr[t.name]["class"] == rows["cxr"][t.name]
    # the report: an index listing every case, each linking its page
    index = out / "report" / "index.html"
    links = _links(index)
    for cid in rows:
        assert f"cases/{cid}.html" in links, cid
        assert (out / "report" / "cases" / f"{cid}.html").is_file()


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("href", "src")]


def _links(path):
    parser = _Links()
    parser.feed(open(path, encoding="utf-8").read())
    return parser.refs


def test_report_shows_the_gradcam_of_explain(trained_2d, dataset_2d, tmp_path):
    from nnunet_mtl.outputs import clinical as clinical_outputs
    from nnunet_mtl.workflow import explain_folder
    images = os.path.join(dataset_2d.raw_folder, "imagesTs")
    out = tmp_path / "out"
    predict_folder(load_predictor(trained_2d, folds=[0], use_mirroring=False, backend="torch"), images, str(out))
    explain_folder(trained_2d, images, str(out / "explanations"), [0], "checkpoint_final.pth", "cpu",
                   prediction_folder=str(out))
    index = clinical_outputs.write_report_folder(trained_2d, str(out), images)
    rows = read_rows(out / "predictions.csv")
    for cid in rows:
        page = out / "report" / "cases" / f"{cid}.html"
        refs = _links(page)
        assert f"{cid}_gradcam.png" in refs, (cid, refs)
        for r in refs:
            if "://" not in r and not r.endswith(".html"):
                assert (page.parent / r).is_file(), r
    assert all(f"cases/{cid}.html" in _links(index) for cid in rows)


def test_a_rerun_without_explain_or_report_moves_their_stale_pages_aside(trained_2d, dataset_2d, tmp_path, capsys):
    """Issue 26: outputs that depend on flags follow them; what an earlier run made is moved aside, one line."""
    from nnunet_mtl.cli import predict as predict_cli
    from nnunet_mtl.workflow import explain_folder
    images = os.path.join(dataset_2d.raw_folder, "imagesTs")
    out = tmp_path / "out"
    argv = ["-i", images, "-o", str(out), "-m", trained_2d, "-f", "0", "--disable_tta", "--backend", "torch"]
    assert predict_cli.main(argv + ["--report"]) == 0
    explain_folder(trained_2d, images, str(out / "explanations"), [0], "checkpoint_final.pth", "cpu",
                   prediction_folder=str(out))
    capsys.readouterr()
    assert predict_cli.main(argv + ["--report"]) == 0  # no --explain now: its maps are not this run's
    printed = capsys.readouterr().out
    assert f"{out / 'explanations'}: from an earlier run, not asked for this time; moved to " \
           f"{out / '.stale' / 'explanations'}" in printed
    pages = list((out / "report" / "cases").glob("*.html"))
    assert pages and not any("_gradcam.png" in r for p in pages for r in _links(p))
    assert (out / ".stale" / "explanations").is_dir() and not (out / "explanations").exists()
    assert predict_cli.main(argv) == 0
    assert not (out / "report").exists() and (out / ".stale" / "report" / "index.html").is_file()
    assert len(read_rows(out / "predictions.csv")) == len(os.listdir(images))  # the predictions themselves stay
