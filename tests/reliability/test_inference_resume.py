"""Issue 13, inference re-runs: rows written as cases finish, a killed run resumes, and nothing stale
survives a re-run (changed model or settings, changed input, removed input)."""
import csv
import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_mtl.inference.folders import predict_folder
from nnunet_mtl.inference.loader import load_predictor
from nnunet_mtl.inference.record import PROVENANCE_NAME, RECORD_NAME
from tests.reliability.helpers import snapshot

pytestmark = pytest.mark.timeout(600)

KILL_AFTER_FIRST_ROW = textwrap.dedent("""
    import os, signal, sys
    from nnunet_mtl.inference import record as prediction_merge
    from nnunet_mtl.inference.folders import predict_folder
    from nnunet_mtl.inference.loader import load_predictor
    append = prediction_merge.PredictionRecord.append
    def append_then_die(self, *args, **kwargs):
        append(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    prediction_merge.PredictionRecord.append = append_then_die
    model, images, out = sys.argv[1:4]
    predict_folder(load_predictor(model, folds=[0], use_mirroring=False, backend="torch"), images, out,
                   num_processes_preprocessing=1, num_processes_export=1)
""")


def _rows(out):
    with open(os.path.join(out, "predictions.csv")) as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def _masks(out):
    """Cases with a predicted mask (NIfTI for NIfTI inputs, PNG for PNG inputs)."""
    return sorted(f[:-len(e)] for f in os.listdir(out) for e in (".nii.gz", ".png") if f.endswith(e))


def _record(out):
    with open(os.path.join(out, RECORD_NAME)) as f:
        return [json.loads(line) for line in f]


def _predict(model_dir, images, out, lines, **kw):
    predictor = load_predictor(model_dir, folds=[0], use_mirroring=False, backend="torch")
    return predict_folder(predictor, images, out, num_processes_preprocessing=1, num_processes_export=1,
                          report=lines.append, **kw)


@pytest.fixture
def images(dataset_2d, tmp_path):
    """A copy of the test images (nnU-Net's layout: read in place, hashed by the predictor)."""
    folder = tmp_path / "images"
    shutil.copytree(os.path.join(dataset_2d.raw_folder, "imagesTs"), folder)
    return str(folder)


@pytest.fixture
def model(trained_2d, tmp_path):
    """A copy of the model folder, so a test can 'retrain' it."""
    folder = tmp_path / "model"
    shutil.copytree(trained_2d, folder, ignore=shutil.ignore_patterns("validation", "*.png"))
    return str(folder)


def test_killed_inference_resumes_with_one_row_per_case(model, images, tmp_path):
    out = str(tmp_path / "out")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo] + sys.path)}
    proc = subprocess.run([sys.executable, "-c", KILL_AFTER_FIRST_ROW, model, images, out], env=env,
                          capture_output=True, text=True, timeout=500)
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert len(_record(out)) == 1 and not os.path.exists(os.path.join(out, "predictions.csv"))
    first = _record(out)[0]["case_id"]
    lines = []
    _predict(model, images, out, lines)
    rows = _rows(out)
    assert sorted(rows) == _masks(out) and len(rows) == 3
    assert lines == [f"{out}: 2 predicted, 1 kept, 0 removed"]
    assert {e["model"] for e in _record(out)} == {json.load(open(os.path.join(out, PROVENANCE_NAME)))["model_key"]}
    assert first in rows


def test_unchanged_rerun_keeps_everything_and_overwrite_redoes_it(model, images, tmp_path):
    out, lines = str(tmp_path / "out"), []
    _predict(model, images, out, lines)
    before = snapshot(out)
    _predict(model, images, out, lines)
    assert snapshot(out) == before
    _predict(model, images, out, lines, overwrite=True)
    assert lines[1:] == [f"{out}: 0 predicted, 3 kept, 0 removed", f"{out}: 3 predicted, 0 kept, 0 removed"]


def test_retrained_model_replaces_every_row_and_mask(model, images, tmp_path):
    out, lines = str(tmp_path / "out"), []
    _predict(model, images, out, lines)
    old = _rows(out)
    ckpt = os.path.join(model, "fold_0", "checkpoint_final.pth")
    state = torch.load(ckpt, map_location="cpu", weights_only=False)
    bias = next(k for k in state["network_weights"] if k.startswith("heads.") and k.endswith("bias"))
    state["network_weights"][bias] = state["network_weights"][bias] + torch.tensor([2.0, -2.0])
    torch.save(state, ckpt)  # a "retrained" fold: same path, new content
    _predict(model, images, out, lines)
    assert lines[-1] == f"{out}: 3 predicted, 0 kept, 0 removed (model or settings changed: checkpoints; its cases " \
                        f"predicted again)"
    new = _rows(out)
    assert sorted(new) == sorted(old) == _masks(out)
    assert all(new[c]["finding_prob_absent"] != old[c]["finding_prob_absent"] for c in new)


def test_changed_settings_make_every_case_out_of_date(model, images, tmp_path):
    out, lines = str(tmp_path / "out"), []
    _predict(model, images, out, lines)
    predictor = load_predictor(model, folds=[0], use_mirroring=False, step_size=0.75, backend="torch")
    predict_folder(predictor, images, out, num_processes_preprocessing=1, num_processes_export=1, report=lines.append)
    assert lines[-1].startswith(f"{out}: 3 predicted, 0 kept, 0 removed (model or settings changed: step_size;")
    prov = json.load(open(os.path.join(out, PROVENANCE_NAME)))
    assert prov["model"]["step_size"] == 0.75 and prov["model"]["backend"] == "torch"
    assert prov["model"]["checkpoints"][0]["path"].endswith(os.path.join("fold_0", "checkpoint_final.pth"))
    assert sorted(prov["cases"]) == _masks(out)


def test_changed_input_is_predicted_again_and_removed_input_loses_row_and_mask(model, images, tmp_path):
    out, lines = str(tmp_path / "out"), []
    _predict(model, images, out, lines)
    files = sorted(os.listdir(images))
    changed, removed = files[0], files[1]
    img = sitk.ReadImage(os.path.join(images, changed))
    sitk.WriteImage(_flipped(img), os.path.join(images, changed))
    os.utime(os.path.join(images, changed), ns=(1_000_000_000, 1_000_000_000))  # older than the mask
    os.remove(os.path.join(images, removed))
    _predict(model, images, out, lines)
    assert lines[-1] == f"{out}: 1 predicted, 1 kept, 1 removed"
    gone = removed[:-len("_0000.nii.gz")]
    assert gone not in _rows(out) and gone not in _masks(out) and len(_rows(out)) == 2
    assert gone not in {e["case_id"] for e in _record(out)}


def _flipped(img):
    arr = sitk.GetArrayFromImage(img)
    out = sitk.GetImageFromArray(np.ascontiguousarray(arr[..., ::-1]) + 1.0)
    out.CopyInformation(img)
    return out


def test_masks_without_rows_from_an_older_run_are_predicted(model, images, tmp_path):
    """The bug of issue 13: 40 masks, 25 rows, and a re-run that never computes the missing rows."""
    out, lines = str(tmp_path / "out"), []
    _predict(model, images, out, lines)
    os.remove(os.path.join(out, RECORD_NAME))  # what an older version left: masks and a partial CSV
    with open(os.path.join(out, "predictions.csv")) as f:
        head = f.readlines()[:2]
    with open(os.path.join(out, "predictions.csv"), "w") as f:
        f.writelines(head)
    _predict(model, images, out, lines)
    assert lines[-1] == f"{out}: 3 predicted, 0 kept, 0 removed" and len(_rows(out)) == 3


def test_converted_inputs_follow_their_sources(model, tmp_path):
    """PNG inputs go through the conversion manifest: a replaced file (older mtime) is predicted again,
    a removed one loses its conversion, row and mask, new clip settings redo every case."""
    from PIL import Image
    folder = tmp_path / "png"
    folder.mkdir()
    for i, name in enumerate(("a", "b", "c")):
        Image.fromarray((np.random.default_rng(i).random((64, 64)) * 255).astype(np.uint8)).save(folder / f"{name}.png")
    out, lines = str(tmp_path / "out"), []
    _predict(model, str(folder), out, lines)
    Image.fromarray(np.full((64, 64), 200, np.uint8)).save(folder / "a.png")
    os.utime(folder / "a.png", ns=(1_000_000_000, 1_000_000_000))
    os.remove(folder / "b.png")
    _predict(model, str(folder), out, lines)
    assert lines[-1] == f"{out}: 1 predicted, 1 kept, 1 removed"
    assert sorted(_rows(out)) == _masks(out) == ["a", "c"]
    _predict(model, str(folder), out, lines, clip_percentiles=(1, 99))
    assert lines[-1] == f"{out}: 2 predicted, 0 kept, 0 removed"
