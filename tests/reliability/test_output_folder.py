"""Issue 26, one output folder: a failed --overwrite run keeps every earlier result it did not replace (each row
with its mask, one model) and says what is left; two runs into one folder: one writes, the other refuses in one
line naming the folder and the writer's PID; a part id outside -num_parts, an output path under a file and
Ctrl-C are one line each (exit 2, 2 and 130)."""
import contextlib
import csv
import io
import os
import shutil
import threading

import pytest

from nnunet_mtl.cli import predict as predict_cli
from nnunet_mtl.inference import writer_lock
from nnunet_mtl.inference.folders import predict_folder
from nnunet_mtl.inference.loader import load_predictor
from nnunet_mtl.inference.predictor import nnUNetPredictorMTL

pytestmark = pytest.mark.timeout(600)


@pytest.fixture
def images(dataset_2d, tmp_path):
    folder = tmp_path / "images"
    shutil.copytree(os.path.join(dataset_2d.raw_folder, "imagesTs"), folder)
    return str(folder)


def _predictor(model):
    return load_predictor(model, folds=[0], use_mirroring=False, backend="torch")


def _rows(out):
    with open(os.path.join(out, "predictions.csv")) as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def _masks(out):
    return {f[:-len(".nii.gz")]: os.stat(os.path.join(out, f)).st_mtime_ns
            for f in os.listdir(out) if f.endswith(".nii.gz")}


def _cli(argv):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = predict_cli.main(argv)
        except SystemExit as e:  # argparse
            rc = e.code
    return rc, out.getvalue(), [ln for ln in err.getvalue().splitlines() if ln.strip()]


def test_a_failed_overwrite_run_keeps_what_it_did_not_replace(trained_2d, images, tmp_path, monkeypatch, capsys):
    out = str(tmp_path / "out")
    predict_folder(_predictor(trained_2d), images, out, num_processes_preprocessing=1, num_processes_export=1)
    before_rows, before_masks = _rows(out), _masks(out)
    assert len(before_masks) >= 3 and set(before_rows) == set(before_masks)
    progress = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith(f"predicting into {out}: ")]
    assert len(progress) == len(before_masks) and f"done ({len(before_masks)}/{len(before_masks)}, " in progress[-1]

    predict_case = nnUNetPredictorMTL.predict_case
    calls = []

    def fails_on_the_second_case(self, data, case_id=None):
        calls.append(case_id)
        if len(calls) == 2:
            raise RuntimeError("the runtime died")
        return predict_case(self, data, case_id)

    monkeypatch.setattr(nnUNetPredictorMTL, "predict_case", fails_on_the_second_case)
    lines = []
    with pytest.raises(RuntimeError, match="the runtime died"):
        predict_folder(_predictor(trained_2d), images, out, overwrite=True, num_processes_preprocessing=1,
                       num_processes_export=1, report=lines.append)
    rows, masks = _rows(out), _masks(out)
    assert set(masks) == set(before_masks)  # nothing removed before its replacement existed
    assert set(rows) <= set(masks)  # every row has its mask
    assert [m for m in masks if masks[m] != before_masks[m]] == [calls[0]]  # the one finished case, replaced
    assert rows[calls[0]] == before_rows[calls[0]]  # same model and input: the same numbers
    assert len(lines) == 1 and f"stopped after 1 of {len(before_masks)}" in lines[0] and "run again" in lines[0]
    assert not [d for d in os.listdir(out) if d.startswith(".incoming")]  # no staging left behind

    monkeypatch.setattr(nnUNetPredictorMTL, "predict_case", predict_case)
    predict_folder(_predictor(trained_2d), images, out, report=lines.append)  # same model: the old rows hold
    assert _rows(out) == before_rows and lines[-1].startswith(f"{out}: 0 predicted, {len(before_rows)} kept")


def test_two_runs_into_one_folder_one_writes_the_other_refuses(trained_2d, images, tmp_path):
    out = str(tmp_path / "out")
    predictors = [_predictor(trained_2d), _predictor(trained_2d)]
    started, results = threading.Barrier(2), {}

    def run(i):
        started.wait()
        try:
            results[i] = predict_folder(predictors[i], images, out, num_processes_preprocessing=1,
                                        num_processes_export=1, report=lambda line: None)
        except writer_lock.FolderBusyError as e:
            results[i] = e

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    refused = [r for r in results.values() if isinstance(r, Exception)]
    assert len(results) == 2 and len(refused) <= 1
    for e in refused:
        assert str(e).startswith(f"{out}: another run (PID {os.getpid()}) is writing")
    rows, masks = _rows(out), _masks(out)
    assert set(rows) == set(masks) and len(rows) == len(os.listdir(images))  # one complete, consistent folder

    with writer_lock.exclusive_writer(out):  # a run that holds the folder all along: the CLI refuses
        rc, stdout, err = _cli(["-i", images, "-o", out, "-m", trained_2d, "-f", "0", "--backend", "torch"])
    assert rc == 2 and "predictions:" not in stdout
    assert err == [f"nnunet_mtl_predict: error: {out}: another run (PID {os.getpid()}) is writing into this "
                   f"folder; wait for it to finish or choose another output folder"]
    assert _rows(out) == rows and _masks(out) == masks
    with writer_lock.exclusive_writer(out, num_parts=2, part_id=0):  # parts share the folder, not a part
        with writer_lock.exclusive_writer(out, num_parts=2, part_id=1):
            with pytest.raises(writer_lock.FolderBusyError, match="writing part 1 of 2"):
                with writer_lock.exclusive_writer(out, num_parts=2, part_id=1):
                    pass
        with pytest.raises(writer_lock.FolderBusyError, match="writing into this folder"):
            with writer_lock.exclusive_writer(out):
                pass


def test_bad_part_ids_write_failures_and_ctrl_c_are_one_line(trained_2d, images, tmp_path, monkeypatch):
    base = ["-i", images, "-m", trained_2d, "-f", "0", "--backend", "torch"]
    rc, _, err = _cli(base + ["-o", str(tmp_path / "parts"), "-num_parts", "2", "-part_id", "5"])
    assert rc == 2 and "-part_id 5 is outside -num_parts 2" in err[-1]
    assert not os.path.exists(tmp_path / "parts")

    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    rc, _, err = _cli(base + ["-o", str(blocker / "out")])
    assert rc == 2 and len(err) == 1 and err[0].startswith("nnunet_mtl_predict: error: ") and str(blocker) in err[0]

    out = str(tmp_path / "out")
    os.makedirs(os.path.join(out, "predictions.csv"))  # a folder where the table goes
    rc, _, err = _cli(base + ["-o", out])
    assert rc == 2 and "predictions.csv" in err[-1] and "Traceback" not in "".join(err)
    masks = _masks(out)
    assert masks  # the masks written before the table failed are kept

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    shutil.rmtree(os.path.join(out, "predictions.csv"))
    monkeypatch.setattr(nnUNetPredictorMTL, "predict_case", interrupted)
    rc, _, err = _cli(base + ["-o", out, "--overwrite"])
    assert rc == 130 and "interrupted" in err[-1]
    assert _masks(out) == masks and set(_rows(out)) == set(masks)
