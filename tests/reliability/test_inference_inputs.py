"""Issue 13, test inputs: checked against the model before prediction, converted once, tracked by content.

Each refused input is one line naming the file; what an earlier run wrote (the output folder, the
user's own nnU-Net inputs) is left as it was."""
import json
import os
import time
from types import SimpleNamespace

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from nnunet_mtl.conversion.inference_inputs import ModelInputs
from nnunet_mtl.conversion.provenance import MANIFEST
from nnunet_mtl.conversion.masks import ConversionError
from nnunet_mtl.inference.folders import list_inputs, prepare_folder, prepare_inputs, predict_folder
from tests.reliability.helpers import snapshot

GREY_2D = ModelInputs({"0": "rescale_to_0_1"}, 2)
RGB_2D = ModelInputs({"0": "R", "1": "G", "2": "B"}, 2)
CT_3D = ModelInputs({"0": "CT"}, 3)


def _png(path, seed=0, colour=False, size=(10, 12)):
    rng = np.random.default_rng(seed)
    shape = size + (3,) if colour else size
    Image.fromarray(rng.integers(0, 255, shape).astype(np.uint8)).save(path)
    return str(path)


def _nifti(path, shape=(4, 6, 6), seed=0, components=1):
    rng = np.random.default_rng(seed)
    arr = rng.normal(size=shape + ((components,) if components > 1 else ())).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(arr, isVector=components > 1), str(path))
    return str(path)


def _read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


# ------------------------------------------------------------------------------------- what is in the folder
def test_empty_test_folder_is_an_error(tmp_path):
    (tmp_path / "in").mkdir()
    with pytest.raises(ConversionError, match=r"in: no images to predict$"):
        prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), GREY_2D)
    (tmp_path / "in" / "notes.txt").write_text("x")
    with pytest.raises(ConversionError, match=r"no images to predict \(only side files: notes.txt\)"):
        prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), GREY_2D)
    with pytest.raises(ConversionError, match=r"missing: input folder not found"):
        prepare_folder(str(tmp_path / "missing"), str(tmp_path / "out"), GREY_2D)


def test_duplicate_stems_are_refused_naming_both(tmp_path):
    (tmp_path / "in").mkdir()
    _png(tmp_path / "in" / "a.png")
    _nifti(tmp_path / "in" / "a.nii.gz", shape=(10, 12))
    with pytest.raises(ConversionError, match=r"a\.png: case 'a' appears twice in .*in \(a\.nii\.gz\)"):
        prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), GREY_2D)


def test_same_case_as_nnunet_name_and_plain_name_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    _png(tmp_path / "in" / "a.png")
    _nifti(tmp_path / "in" / "a_0000.nii.gz", shape=(10, 12))
    with pytest.raises(ConversionError, match=r"a\.png: case 'a' appears twice \(.*a_0000\.nii\.gz\)"):
        prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), GREY_2D)


def test_unsupported_file_is_refused_and_side_files_skipped_with_a_line(tmp_path, caplog):
    (tmp_path / "in").mkdir()
    _png(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "labels.csv").write_text("case_id\n")
    (tmp_path / "in" / "readme.txt").write_text("x")
    prepared = prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), GREY_2D)
    assert list(prepared.cases) == ["a"]
    lines = [r.getMessage() for r in caplog.records if "side file" in r.getMessage()]
    assert len(lines) == 1 and "labels.csv" in lines[0] and "readme.txt" in lines[0]
    (tmp_path / "in" / "scan.xyz").write_text("?")
    with pytest.raises(ConversionError, match=r"scan\.xyz: unknown image format"):
        prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), GREY_2D)


def test_bmp_and_tiff_test_images_are_accepted(tmp_path):
    (tmp_path / "in").mkdir()
    for name in ("a.bmp", "b.tif", "c.tiff", "d.png"):
        _png(tmp_path / "in" / name)
    prepared = prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), GREY_2D)
    assert sorted(prepared.cases) == ["a", "b", "c", "d"]
    for files in prepared.cases.values():
        assert len(files) == 1 and _read(files[0]).shape == (10, 12)


# ------------------------------------------------------------------------------------- channels
def test_colour_image_into_rgb_model_gives_three_channel_files(tmp_path):
    (tmp_path / "in").mkdir()
    src = _png(tmp_path / "in" / "col.png", colour=True)
    _png(tmp_path / "in" / "grey.png", seed=1)
    prepared = prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), RGB_2D)
    files = prepared.cases["col"]
    assert [os.path.basename(f) for f in files] == ["col_0000.nii.gz", "col_0001.nii.gz", "col_0002.nii.gz"]
    rgb = np.asarray(Image.open(src), np.float32)
    for c in range(3):  # R, G, B as stored, no clipping (as conversion does for colour datasets)
        np.testing.assert_array_equal(_read(files[c]), rgb[..., c])
    grey = [_read(f) for f in prepared.cases["grey"]]  # a grey image is repeated into all three
    assert len(grey) == 3 and all(np.array_equal(grey[0], g) for g in grey)


def test_colour_image_into_grey_model_is_one_luma_channel_with_a_note(tmp_path):
    (tmp_path / "in").mkdir()
    _png(tmp_path / "in" / "col.png", colour=True)
    prepared = prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), GREY_2D)
    assert len(prepared.cases["col"]) == 1
    assert "1 colour image(s) converted to one grey (luma) channel" in prepared.summary()


def test_two_channel_case_into_one_channel_model_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    _nifti(tmp_path / "in" / "a_0000.nii.gz")
    _nifti(tmp_path / "in" / "a_0001.nii.gz", seed=1)
    with pytest.raises(ConversionError, match=r"a_0000\.nii\.gz: case 'a' has 2 channel\(s\) in 2 files but the "
                                              r"model takes 1 channel\(s\) \(CT\)"):
        prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), CT_3D)


def test_two_component_volume_into_one_channel_model_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    _nifti(tmp_path / "in" / "scan.nii.gz", components=2)
    with pytest.raises(ConversionError, match=r"scan\.nii\.gz: case 'scan' has 2 channel\(s\) but the model takes 1"):
        prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), CT_3D)


def test_missing_channel_file_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    _nifti(tmp_path / "in" / "a_0000.nii.gz")
    _nifti(tmp_path / "in" / "a_0002.nii.gz")
    with pytest.raises(ConversionError, match=r"case 'a' has channel files \['0000', '0002'\]"):
        prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), ModelInputs({"0": "T1", "1": "T2"}, 3))


# ------------------------------------------------------------------------------------- dimensionality
def test_3d_volume_into_2d_model_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    _nifti(tmp_path / "in" / "vol.nii.gz")
    with pytest.raises(ConversionError, match=r"vol\.nii\.gz: a 3D volume \(size \[6, 6, 4\]\) but the model was "
                                              r"trained on 2D images"):
        prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), GREY_2D)


def test_2d_image_into_3d_model_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    _png(tmp_path / "in" / "x.png")
    with pytest.raises(ConversionError, match=r"x\.png: a 2D image \(size \[12, 10\]\) but the model takes 3D"):
        prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), CT_3D)


def test_dimensionality_comes_from_the_plans():
    dj = {"channel_names": {"0": "CT"}}
    assert ModelInputs.from_plans(dj, [16, 32, 32], [40, 64, 64]).image_dims == 3
    assert ModelInputs.from_plans(dj, [32, 32], [40, 64, 64]).image_dims == 3  # 2d configuration of volumes
    assert ModelInputs.from_plans(dj, [32, 32], [1, 64, 64]).image_dims == 2   # trained on 2D images
    assert RGB_2D.colour and RGB_2D.files_per_case == 1 and not GREY_2D.colour


def test_2d_configuration_of_a_3d_dataset_takes_volumes(tmp_path):
    (tmp_path / "in").mkdir()
    _nifti(tmp_path / "in" / "vol.nii.gz")
    model = ModelInputs.from_plans({"channel_names": {"0": "CT"}}, [32, 32], [4, 6, 6])
    assert list(prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), model).cases) == ["vol"]


def test_nan_test_image_is_refused_naming_it(tmp_path):
    (tmp_path / "in").mkdir()
    arr = np.ones((4, 6, 6), np.float32)
    arr[1, 1, 1] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "in" / "bad.nrrd"))
    with pytest.raises(ConversionError, match=r"bad\.nrrd: image has 1 NaN or infinite"):
        prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), CT_3D)


def test_nan_in_a_nifti_test_image_is_refused(tmp_path):
    (tmp_path / "in").mkdir()
    arr = np.ones((4, 6, 6), np.float32)
    arr[0, 0, 0] = np.inf
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(tmp_path / "in" / "bad_0000.nii.gz"))
    with pytest.raises(ConversionError, match=r"bad_0000\.nii\.gz: image has 1 NaN or infinite"):
        prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), CT_3D)


# ------------------------------------------------------------------------------------- provenance
def _two_pngs(tmp_path):
    (tmp_path / "in").mkdir()
    return _png(tmp_path / "in" / "a.png", seed=0), _png(tmp_path / "in" / "b.png", seed=1)


def _prepare(tmp_path, **kw):
    return prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), GREY_2D, **kw)


def test_unchanged_inputs_are_not_reconverted(tmp_path):
    _two_pngs(tmp_path)
    first = _prepare(tmp_path)
    assert first.converted == ["a", "b"] and first.reused == []
    before = snapshot(first.folder)
    again = _prepare(tmp_path)
    assert again.converted == [] and again.reused == ["a", "b"]
    assert snapshot(first.folder) == before
    with open(os.path.join(first.folder, MANIFEST)) as f:
        record = json.load(f)["cases"]["a"]
    assert record["sources"] == [os.path.abspath(tmp_path / "in" / "a.png")]
    assert record["settings"] == {"clip_percentiles": [0.5, 98.5], "channels_per_file": [1]}
    assert len(record["sha256"][0]) == 64


def test_replaced_input_with_older_mtime_is_reconverted(tmp_path):
    a, _ = _two_pngs(tmp_path)
    first = _prepare(tmp_path)
    old = _read(first.cases["a"][0])
    _png(a, seed=5)  # a different image ...
    os.utime(a, ns=(1_000_000_000, 1_000_000_000))  # ... with an mtime older than its conversion
    again = _prepare(tmp_path)
    assert again.converted == ["a"] and again.reused == ["b"]
    assert not np.array_equal(_read(again.cases["a"][0]), old)


def test_touched_input_with_same_content_is_reused(tmp_path):
    a, _ = _two_pngs(tmp_path)
    _prepare(tmp_path)
    future = time.time_ns() + 10**10
    os.utime(a, ns=(future, future))
    assert _prepare(tmp_path).reused == ["a", "b"]


def test_removed_input_loses_its_conversion(tmp_path):
    _, b = _two_pngs(tmp_path)
    first = _prepare(tmp_path)
    os.remove(b)
    again = _prepare(tmp_path)
    assert list(again.cases) == ["a"] and again.dropped == ["b"]
    assert sorted(f for f in os.listdir(first.folder) if f.endswith(".nii.gz")) == ["a_0000.nii.gz"]
    assert "1 conversion(s) removed, their input is gone (b)" in again.summary()


def test_force_reconverts_everything(tmp_path):
    _two_pngs(tmp_path)
    _prepare(tmp_path)
    assert _prepare(tmp_path, force=True).converted == ["a", "b"]


def test_changed_settings_reconvert(tmp_path):
    _two_pngs(tmp_path)
    _prepare(tmp_path)
    assert _prepare(tmp_path, clip_percentiles=(1, 99)).converted == ["a", "b"]


def test_same_name_in_two_folders_never_shares_a_conversion(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    p1, p2 = _png(tmp_path / "x" / "img.png", seed=1), _png(tmp_path / "y" / "img.png", seed=2)
    work = str(tmp_path / "work")
    first = _read(prepare_inputs([p1], work, model=GREY_2D)["img"])
    second = _read(prepare_inputs([p2], work, model=GREY_2D)["img"])  # classify_files converts one file at a time
    assert not np.array_equal(first, second)
    with pytest.raises(ConversionError, match=r"y/img\.png: case 'img' appears twice \(.*x/img\.png\)"):
        prepare_inputs([p1, p2], work, model=GREY_2D)


def test_conversions_left_by_an_older_run_are_redone_or_removed(tmp_path):
    a, _ = _two_pngs(tmp_path)
    out = tmp_path / "out" / ".converted_inputs"
    out.mkdir(parents=True)
    stale = np.zeros((10, 12), np.float32)
    for name in ("a_0000.nii.gz", "gone_0000.nii.gz"):  # no manifest: written before provenance existed
        sitk.WriteImage(sitk.GetImageFromArray(stale), str(out / name))
    prepared = _prepare(tmp_path)
    assert prepared.converted == ["a", "b"] and prepared.dropped == ["gone"]
    assert not os.path.exists(out / "gone_0000.nii.gz") and _read(str(out / "a_0000.nii.gz")).any()


def test_nnunet_input_folder_is_used_in_place_and_left_untouched(tmp_path):
    (tmp_path / "in").mkdir()
    _nifti(tmp_path / "in" / "a_0000.nii.gz")
    _nifti(tmp_path / "in" / "b_0000.nii.gz", seed=1)
    before = snapshot(str(tmp_path / "in"))
    prepared = prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), CT_3D)
    assert prepared.folder == str(tmp_path / "in") and sorted(prepared.cases) == ["a", "b"]
    assert snapshot(str(tmp_path / "in")) == before and not os.path.exists(tmp_path / "out")
    with pytest.raises(ConversionError, match=r"a 3D volume"):
        prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), GREY_2D)
    assert snapshot(str(tmp_path / "in")) == before


# ------------------------------------------------------------------------------------- predict_folder's input side
class _RecordingPredictor(SimpleNamespace):
    """Stands in for a loaded predictor: records which files nnU-Net would have read."""

    def __init__(self, model: ModelInputs):
        from nnunet_mtl.targets import CLASSIFICATION, Target, TargetSpec
        super().__init__(dataset_json={"channel_names": dict(model.channel_names), "file_ending": ".nii.gz"},
                         configuration_manager=SimpleNamespace(patch_size=[32, 32]),
                         plans_manager=SimpleNamespace(plans={"original_median_shape_after_transp": [1, 10, 12]}),
                         spec=TargetSpec((Target("finding", CLASSIFICATION, classes=("no", "yes")),)), seen=[])


@pytest.fixture
def recording_engine(monkeypatch):
    """predict_folder's engine and model identity replaced: nothing is predicted, the inputs are recorded."""
    import nnunet_mtl.inference.folders as inference
    monkeypatch.setattr(inference.provenance, "model_identity", lambda predictor: {"stand_in": True})
    monkeypatch.setattr(inference, "run_cases", lambda predictor, lists, ofiles, *a, **kw: predictor.seen.append(
        sorted(os.path.basename(f) for files in lists for f in files)))


def test_predict_folder_reads_only_current_inputs(tmp_path, recording_engine):
    _, b = _two_pngs(tmp_path)
    predictor = _RecordingPredictor(GREY_2D)
    predict_folder(predictor, str(tmp_path / "in"), str(tmp_path / "out"))
    os.remove(b)
    predict_folder(predictor, str(tmp_path / "in"), str(tmp_path / "out"))
    assert predictor.seen == [["a_0000.nii.gz", "b_0000.nii.gz"], ["a_0000.nii.gz"]]


def test_predict_folder_refuses_bad_inputs_before_touching_the_output(tmp_path, recording_engine):
    (tmp_path / "in").mkdir()
    _nifti(tmp_path / "in" / "vol.nii.gz")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "predictions.csv").write_text("case_id,finding\nold,yes\n")
    before = snapshot(str(tmp_path / "out"))
    predictor = _RecordingPredictor(GREY_2D)
    with pytest.raises(ConversionError, match=r"vol\.nii\.gz: a 3D volume"):
        predict_folder(predictor, str(tmp_path / "in"), str(tmp_path / "out"))
    assert predictor.seen == [] and snapshot(str(tmp_path / "out")) == before


def test_list_inputs_skips_hidden_files(tmp_path):
    (tmp_path / ".DS_Store").write_text("")
    _png(tmp_path / "a.png")
    assert list_inputs(str(tmp_path)) == [str(tmp_path / "a.png")]
