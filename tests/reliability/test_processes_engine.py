"""Issue 13, ``--engine processes``: nnU-Net's loop exports in worker processes and waits only at the
end; each case's row is still handed over as soon as its mask is written, so a killed run keeps the
rows of its finished cases, and never a row without its mask."""
import glob
import os
import time

import pytest
import SimpleITK as sitk
import torch

from nnunet_mtl.inference.loader import load_predictor

pytestmark = pytest.mark.timeout(600)


def _wait_for_mask(path: str, timeout: float = 300.0) -> None:
    start = time.time()
    while time.time() - start < timeout:
        try:
            sitk.ReadImage(path)
            return
        except RuntimeError:
            time.sleep(0.2)
    raise TimeoutError(path)


def test_rows_are_handed_over_as_their_masks_are_written(trained_2d, dataset_2d, tmp_path):
    predictor = load_predictor(trained_2d, folds=[0], use_mirroring=False, backend="torch")
    out, events = str(tmp_path), []

    def case_done(ofile, heads):
        events.append(("row", heads.case_id, os.path.isfile(ofile + ".nii.gz")))

    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    files = sorted(glob.glob(os.path.join(dataset_2d.raw_folder, "imagesTs", "*_0000.nii.gz")))
    cases = [os.path.basename(f)[:-len("_0000.nii.gz")] for f in files]

    def items():
        """nnU-Net's data iterator, slowed down: the next case only once the previous mask is on disk."""
        for i, (cid, path) in enumerate(zip(cases, files)):
            if i:
                _wait_for_mask(os.path.join(out, cases[i - 1] + ".nii.gz"))
            data, _, props = preprocessor.run_case([path], None, predictor.plans_manager,
                                                   predictor.configuration_manager, predictor.dataset_json)
            events.append(("case", cid))
            yield {"data": torch.from_numpy(data), "data_properties": props, "ofile": os.path.join(out, cid)}

    predictor.predict_from_data_iterator(items(), num_processes_segmentation_export=1, on_case_done=case_done)
    a, b, c = cases
    assert events == [("case", a), ("case", b), ("row", a, True), ("case", c), ("row", b, True), ("row", c, True)]


def test_a_stale_mask_from_an_older_run_does_not_count_as_exported(trained_2d, dataset_2d, tmp_path):
    """Masks of an older run are in the folder (nnU-Net's own predict_from_files overwrites them):
    a row is handed over only once this run's export has replaced its case's mask."""
    predictor = load_predictor(trained_2d, folds=[0], use_mirroring=False, backend="torch")
    out, rows = str(tmp_path), []
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    files = sorted(glob.glob(os.path.join(dataset_2d.raw_folder, "imagesTs", "*_0000.nii.gz")))
    cases = [os.path.basename(f)[:-len("_0000.nii.gz")] for f in files]
    stale = {}
    for cid, path in zip(cases, files):
        mask = os.path.join(out, cid + ".nii.gz")
        sitk.WriteImage(sitk.Cast(sitk.ReadImage(path) * 0, sitk.sitkUInt8), mask)
        st = os.stat(mask)
        stale[cid] = (st.st_ino, st.st_size, st.st_mtime_ns)
        time.sleep(0.01)

    def case_done(ofile, heads):
        st = os.stat(ofile + ".nii.gz")
        rows.append((heads.case_id, (st.st_ino, st.st_size, st.st_mtime_ns) != stale[heads.case_id]))

    def items():
        for cid, path in zip(cases, files):
            data, _, props = preprocessor.run_case([path], None, predictor.plans_manager,
                                                   predictor.configuration_manager, predictor.dataset_json)
            yield {"data": torch.from_numpy(data), "data_properties": props, "ofile": os.path.join(out, cid)}

    predictor.predict_from_data_iterator(items(), num_processes_segmentation_export=1, on_case_done=case_done)
    assert sorted(rows) == [(cid, True) for cid in sorted(cases)]
