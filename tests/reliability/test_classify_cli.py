"""Issue 13, nnunet_mtl_classify: one line per file as each finishes, a bad file is its own line and
the run goes on, equal names in different folders stay apart, only its lines on stdout, -m MODEL."""
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from nnunet_mtl import trainer_dir
from nnunet_mtl.inference.folders import classify_files
from nnunet_mtl.inference.loader import load_predictor

pytestmark = pytest.mark.timeout(600)


def _png(path, seed):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arr = (np.random.default_rng(seed).random((64, 64)) * 255).astype(np.uint8)
    if seed % 2:
        arr[16:48, 16:48] = 255  # a bright square: a different image, not just other noise
    Image.fromarray(arr).save(path)
    return str(path)


def _classify(*args):
    env = {**os.environ, "nnUNet_extTrainer": trainer_dir()}
    return subprocess.run([sys.executable, "-m", "nnunet_mtl.cli.classify", *args], env=env, capture_output=True,
                          text=True, timeout=500)


@pytest.fixture
def files(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    return [_png(tmp_path / "x" / "img.png", 0), str(bad), _png(tmp_path / "y" / "img.png", 1)]


YES_NO = ("yes", "no")


def test_bad_file_is_its_own_line_and_only_result_lines_go_to_stdout(trained_2d, files):
    proc = _classify("-m", trained_2d, *files, "-f", "0")
    lines = proc.stdout.splitlines()
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert [line.split("\t")[0] for line in lines] == files  # nothing else on stdout, in the given order
    good = [lines[0].split("\t"), lines[2].split("\t")]
    assert all(cls in ("absent", "present") and 0.5 <= float(p) <= 1 and s.endswith("s") for _, cls, p, s, *_ in good)
    for _, cls, _, _, *review in good:  # key=value: the conformal set, the review flag, the input check
        fields = dict(f.split("=", 1) for f in review)
        assert set(fields) <= {"set", "needs_review", "ood_score", "ood_flag"}
        assert "set" not in fields or (cls in fields["set"].split("|") + [""] and fields["needs_review"] in YES_NO)
        assert "ood_score" not in fields or (float(fields["ood_score"]) >= 0 and fields["ood_flag"] in YES_NO)
    name, status, reason = lines[1].split("\t")
    assert status == "ERROR" and "bad.png" in reason
    assert "1 of 3 file(s) failed" in proc.stderr


def test_old_positional_model_still_works_with_a_deprecation_line(trained_2d, files):
    proc = _classify(trained_2d, files[0], "-f", "0")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [line.split("\t")[0] for line in proc.stdout.splitlines()] == [files[0]]
    assert f"deprecated; use -m {trained_2d}" in proc.stderr


def test_equal_names_in_two_folders_stay_apart_and_results_stream(trained_2d, files, tmp_path):
    predictor = load_predictor(trained_2d, folds=[0], use_mirroring=False, backend="torch")
    asked = []

    def given():
        for f in (files[0], files[2], files[0]):
            asked.append(f)
            yield f

    results = classify_files(predictor, given(), str(tmp_path / "work"))
    first = next(results)
    assert asked == [files[0]] and first["case_id"] == "img"  # the first answer comes before the next file is read
    rest = list(results)
    x, y, x_again = (r["outputs"]["finding"] for r in [first] + rest)
    assert not np.allclose(x, y) and np.allclose(x, x_again)
