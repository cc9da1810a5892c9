"""A frozen-heads folder (probe heads) gives the same clinical outputs as our model folder: DICOM SEG + SR
from its rows and the stock masks, and review pages."""
import csv
import os

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from nnunet_mtl.cli import predict
from nnunet_mtl.outputs.dicom.sr import read_sr_predictions
from nnunet_mtl.frozen.heads_model import FrozenHeads
from tests.test_add_heads import heads, labels_csv  # noqa: F401  (fixtures: probe heads on a tiny stock model)
from tests.test_clinical_outputs import _links, dx_and_nifti_inputs
from tests.test_frozen import stock_model  # noqa: F401

pytestmark = pytest.mark.timeout(600)


def test_heads_folder_gives_dicom_seg_sr_and_review_pages(heads, dataset_2d, tmp_path, capsys):  # noqa: F811
    inputs, shape = dx_and_nifti_inputs(dataset_2d, tmp_path)
    out = tmp_path / "out"
    assert predict.main(["-i", str(inputs), "-o", str(out), "-m", heads, "-device", "cpu", "-npp", "1", "-nps", "1",
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
    spec = FrozenHeads.load(heads).spec
    assert spec.classification_targets
    for t in spec.classification_targets:
        assert sr[t.name]["class"] == rows["cxr"][t.name]
    # the review pages: every case listed, each with its page
    links = _links(out / "report" / "index.html")
    for cid in rows:
        assert f"cases/{cid}.html" in links and (out / "report" / "cases" / f"{cid}.html").is_file()
