"""A model whose heads were fitted by nnunet_mtl_add_heads gives every output a trained model gives: DICOM SEG + SR
(the stock masks, the fitted heads' rows), review pages and Grad-CAM maps of the fitted heads."""
import csv
import glob
import os

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from nnunet_mtl.cli import predict
from nnunet_mtl.dataset_spec import targets_from_plans
from nnunet_mtl.io_utils import read_json
from nnunet_mtl.outputs.dicom.sr import read_sr_predictions
from tests.test_clinical_outputs import _links, dx_and_nifti_inputs

pytestmark = pytest.mark.timeout(600)


def test_fitted_model_gives_dicom_seg_sr_and_review_pages(fitted_2d, dataset_2d, tmp_path, capsys):
    inputs, shape = dx_and_nifti_inputs(dataset_2d, tmp_path)
    out = tmp_path / "out"
    assert predict.main(["-i", str(inputs), "-o", str(out), "-m", fitted_2d, "-device", "cpu", "-npp", "1", "-nps", "1",
                         "--disable_tta", "--dicom_outputs", "--report"]) == 0
    with open(out / "predictions.csv", newline="") as f:
        rows = {r["case_id"]: r for r in csv.DictReader(f)}
    assert sorted(os.listdir(out / "dicom")) == ["cxr"]
    # the SEG: the stock model's mask, on the source radiograph
    seg = pydicom.dcmread(str(out / "dicom" / "cxr" / "cxr_seg.dcm"))
    assert (seg.Rows, seg.Columns) == shape
    labels = [v for v in dataset_2d.dataset_json["labels"].values() if v != 0]
    mask = np.squeeze(sitk.GetArrayFromImage(sitk.ReadImage(str(out / "cxr.nii.gz"))))
    numbers = [int(f.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
               for f in seg.PerFrameFunctionalGroupsSequence]
    for frame, number in zip(seg.pixel_array.reshape(-1, *shape), numbers):
        np.testing.assert_array_equal(frame > 0, mask == labels[number - 1])
    # the SR: the heads' row (their targets, not the stock model's)
    sr = read_sr_predictions(pydicom.dcmread(str(out / "dicom" / "cxr" / "cxr_sr.dcm")))
    spec = targets_from_plans(read_json(os.path.join(fitted_2d, "plans.json")))
    assert spec.classification_targets
    for t in spec.classification_targets:
        assert sr[t.name]["class"] == rows["cxr"][t.name]
    # the review pages: every case listed, each with its page
    links = _links(out / "report" / "index.html")
    for cid in rows:
        assert f"cases/{cid}.html" in links and (out / "report" / "cases" / f"{cid}.html").is_file()


def test_gradcam_of_fitted_heads_has_the_image_shape(fitted_2d, dataset_2d, tmp_path):
    from nnunet_mtl.outputs.explain import explain_case
    image = sorted(glob.glob(os.path.join(dataset_2d.raw_folder, "imagesTs", "*_0000.nii.gz")))[0]
    paths = explain_case(fitted_2d, [image], str(tmp_path / "case"), "finding", device="cpu", use_mirroring=False)
    cam = sitk.GetArrayFromImage(sitk.ReadImage(paths["cam_nifti"]))
    assert cam.shape == sitk.GetArrayFromImage(sitk.ReadImage(image)).shape
    assert np.isfinite(cam).all() and cam.max() > cam.min()
    assert os.path.isfile(paths["overlay_png"])
