"""Your own data: a dataset description (names, regions, pairs), colour images and 2D file formats."""
import argparse
import csv
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from nnunet_mtl.conversion.description import add_description_arguments, description_from_args
from nnunet_mtl.conversion.detect import ConversionError, convert, convert_with_report
from nnunet_mtl.conversion.registry import LAYOUT_NAMES, LAYOUTS
from nnunet_mtl.dataset_spec import DatasetSpec

NAMES = {"left_lung": 1, "right_lung": 2, "opacity": 3}


def _write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "finding"])
        w.writerows(rows)


def _dataset_json(folder):
    with open(os.path.join(folder, "dataset.json")) as f:
        return json.load(f)


def _array(folder, name):
    return sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, name)))


def lung_layout(root, n=4, size=(16, 16)):
    """images/*.png + masks/*.png with values 0..3 (left lung, right lung, opacity) + labels.csv."""
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(root, sub), exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        cid = f"cxr_{i}"
        Image.fromarray(rng.integers(0, 255, size).astype(np.uint8)).save(os.path.join(root, "images", f"{cid}.png"))
        mask = np.zeros(size, np.uint8)
        mask[2:8, 9:14], mask[2:8, 2:7], mask[4:6, 10:12] = 1, 2, 3
        Image.fromarray(mask).save(os.path.join(root, "masks", f"{cid}.png"))
        rows.append([cid, "yes" if i % 2 else "no"])
    _write_csv(os.path.join(root, "labels.csv"), rows)
    return root


# --------------------------------------------------------------------------------- description
def _check_lung_names(folder):
    dj = _dataset_json(folder)
    assert dj["labels"] == {"background": 0, **NAMES}
    spec = DatasetSpec.from_file(os.path.join(folder, "dataset.json"))
    assert spec.label_names == {1: "left_lung", 2: "right_lung", 3: "opacity"}
    assert spec.regions == {"lungs": (1, 2)}
    assert spec.lateral_pairs == (("left_lung", "right_lung"),)


def test_description_file_names_labels_regions_and_pairs(tmp_path):
    root = lung_layout(str(tmp_path / "lungs"))
    description = tmp_path / "description.json"
    description.write_text(json.dumps({"labels": {"1": "left_lung", "2": "right_lung", "3": "opacity"},
                                       "regions": {"lungs": ["left_lung", "right_lung"]},
                                       "targets": [{"name": "finding", "kind": "classification",
                                                    "classes": ["no", "yes"]}]}))
    result = convert_with_report(root, str(tmp_path / "raw"), 701, "Lungs", description=str(description))
    _check_lung_names(result.folder)  # the pair comes from the names (orientation.detect_lateral_pairs)
    assert "left_lung<->right_lung" in result.report.summary()
    assert _dataset_json(result.folder)["mtl"]["targets"][0]["classes"] == ["no", "yes"]


def test_description_flags(tmp_path):
    root = lung_layout(str(tmp_path / "lungs"))
    parser = argparse.ArgumentParser()
    add_description_arguments(parser.add_argument_group("data"))
    args = parser.parse_args(["--label_names", "1=left_lung", "2=right_lung", "3=opacity",
                              "--regions", "lungs=1,2", "--lateral_pairs", "left_lung:right_lung"])
    folder = convert(root, str(tmp_path / "raw"), 702, "Lungs", description=description_from_args(args))
    _check_lung_names(folder)
    assert description_from_args(parser.parse_args([])) is None


def test_description_errors_name_the_problem(tmp_path):
    root = lung_layout(str(tmp_path / "lungs"))
    raw = str(tmp_path / "raw")
    with pytest.raises(ConversionError, match=r"cxr_0.*\[3\] not declared"):
        convert(root, raw, 703, "Lungs", labels=["left_lung", "right_lung"])
    with pytest.raises(ConversionError, match="mask value 2 has no name"):
        convert(root, raw, 703, "Lungs", labels=["1=left_lung", "3=opacity"])
    with pytest.raises(ConversionError, match="region 'lungs' names label 'lung_l'"):
        convert(root, raw, 703, "Lungs", labels=NAMES, regions={"lungs": ["lung_l"]})
    with pytest.raises(ConversionError, match="lateral pair"):
        convert(root, raw, 703, "Lungs", labels=NAMES, lateral_pairs=[["left_lung", "heart"]])
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps([{"name": "finding", "kind": "classification", "classes": ["no", "yes"]}]))
    both = tmp_path / "both.json"
    both.write_text(json.dumps({"targets": json.loads(spec.read_text())}))
    with pytest.raises(ConversionError, match="targets are given twice"):
        convert(root, raw, 703, "Lungs", spec_json=str(spec), description=str(both))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"label": {"1": "x"}}))
    with pytest.raises(ConversionError, match=r"bad.json: unknown key 'label'"):
        convert(root, raw, 703, "Lungs", description=str(bad))


def test_empty_pair_list_turns_automatic_pairing_off(tmp_path):
    root = lung_layout(str(tmp_path / "lungs"))
    folder = convert(root, str(tmp_path / "raw"), 704, "Lungs", labels=NAMES, lateral_pairs=[])
    assert DatasetSpec.from_file(os.path.join(folder, "dataset.json")).lateral_pairs == ()


def test_description_applies_to_the_pancreas_layout(tmp_path):
    from nnunet_mtl.synthetic import write_pancreas_layout
    root = write_pancreas_layout(str(tmp_path / "pancreas"), n_train=3, n_val=0, n_test=0, shape=(4, 8, 8))
    folder = convert(root, str(tmp_path / "raw"), 705, "Pan", labels=["1=gland", "2=tumour"],
                     regions={"organ": ["gland", "tumour"]}, channel_names=["venous"])
    dj = _dataset_json(folder)
    assert dj["labels"] == {"background": 0, "gland": 1, "tumour": 2} and dj["channel_names"] == {"0": "venous"}
    assert dj["mtl"]["regions"] == {"organ": [1, 2]} and dj["mtl"]["source_layout"] == "pancreas"


def test_synthetic_layout_describes_its_labels(tmp_path):
    from nnunet_mtl.synthetic import DESCRIPTION_FILE, write_radiograph_layout
    root = write_radiograph_layout(str(tmp_path / "cxr"), n=4, n_test=0, size=(16, 16), lateral=True)
    folder = convert(root, str(tmp_path / "raw"), 706, "Cxr", description=os.path.join(root, DESCRIPTION_FILE))
    spec = DatasetSpec.from_file(os.path.join(folder, "dataset.json"))
    assert spec.label_names == {1: "left_lung", 2: "right_lung", 3: "heart"}
    assert spec.lateral_pairs == (("left_lung", "right_lung"),)


def test_registry_lists_every_layout_once():
    assert LAYOUT_NAMES == ("auto", "pancreas", "generic", "radiograph", "dicom_series")
    assert len({layout.name for layout in LAYOUTS}) == len(LAYOUTS)


def test_a_new_layout_is_one_class_and_one_registry_entry(tmp_path, monkeypatch):
    """The extension point: a layout that keeps its cases under cases/ is found by detection."""
    from nnunet_mtl.conversion import registry
    from nnunet_mtl.conversion.generic_layout import GenericLayout

    class CasesFolderLayout(GenericLayout):
        name = "cases_folder"
        expects = "a cases/ folder"

        def recognises(self, input_dir):
            return os.path.isdir(os.path.join(input_dir, "cases"))

        def convert(self, input_dir, *args, **kwargs):
            os.rename(os.path.join(input_dir, "cases"), os.path.join(input_dir, "images"))
            return super().convert(input_dir, *args, **kwargs)

    monkeypatch.setattr(registry, "LAYOUTS", (CasesFolderLayout,) + registry.LAYOUTS)
    root = colour_layout(str(tmp_path / "own"))
    os.rename(os.path.join(root, "images"), os.path.join(root, "cases"))
    assert registry.detect_layout(root).name == "cases_folder"
    assert _dataset_json(convert(root, str(tmp_path / "raw"), 707, "Own", grey=True))["numTraining"] == 4


# ------------------------------------------------------------------------------ colour + formats
def colour_layout(root, n=4, size=(16, 16)):
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    rows = []
    for i in range(n):
        rgb = np.zeros(size + (3,), np.uint8)
        rgb[..., 0], rgb[..., 1], rgb[..., 2] = 10 + i, 100, 200
        rgb[: size[0] // 2, :, 1] = 150
        Image.fromarray(rgb).save(os.path.join(root, "images", f"img_{i}.png"))
        rows.append([f"img_{i}", "yes" if i % 2 else "no"])
    _write_csv(os.path.join(root, "labels.csv"), rows)
    return root


def test_rgb_images_keep_three_channels(tmp_path, capsys):
    root = colour_layout(str(tmp_path / "rgb"))
    folder = convert(root, str(tmp_path / "raw"), 711, "Rgb")
    dj = _dataset_json(folder)
    assert dj["channel_names"] == {"0": "R", "1": "G", "2": "B"}
    assert sorted(os.listdir(os.path.join(folder, "imagesTr")))[:3] == ["img_0_0000.nii.gz", "img_0_0001.nii.gz",
                                                                        "img_0_0002.nii.gz"]
    assert np.all(_array(folder, "imagesTr/img_1_0000.nii.gz") == 11)  # no percentile clipping of colour
    green = _array(folder, "imagesTr/img_1_0001.nii.gz")
    assert green[0, 0] == 150 and green[-1, 0] == 100
    assert np.all(_array(folder, "imagesTr/img_1_0002.nii.gz") == 200)
    assert capsys.readouterr().out.count("kept as three channels") == 1


def test_grey_images_in_a_colour_dataset_are_repeated_and_grey_flag_gives_luma(tmp_path):
    root = colour_layout(str(tmp_path / "rgb"))
    Image.fromarray(np.full((16, 16), 77, np.uint8)).save(os.path.join(root, "images", "img_3.png"))
    result = convert_with_report(root, str(tmp_path / "raw"), 716, "Rgb")
    assert "3 colour image(s) kept as three channels" in result.report.summary()
    assert "1 grey image(s) repeated" in result.report.summary()
    assert all(np.all(_array(result.folder, f"imagesTr/img_3_000{c}.nii.gz") == 77) for c in range(3))
    grey = convert_with_report(root, str(tmp_path / "raw"), 717, "Grey", grey=True, clip_percentiles=None)
    assert _dataset_json(grey.folder)["channel_names"] == {"0": "rescale_to_0_1"}
    assert "converted to one grey channel (luma" in grey.report.summary()
    assert np.allclose(_array(grey.folder, "imagesTr/img_0_0000.nii.gz")[-1, 0],
                       0.299 * 10 + 0.587 * 100 + 0.114 * 200, atol=1e-3)


def test_colour_mask_is_one_clear_error(tmp_path):
    root = lung_layout(str(tmp_path / "lungs"), n=2)
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 1
    Image.fromarray(rgb).save(os.path.join(root, "masks", "cxr_1.png"))
    with pytest.raises(ConversionError) as err:
        convert(root, str(tmp_path / "raw"), 712, "Lungs")
    assert str(err.value).startswith(os.path.join(root, "masks", "cxr_1.png") + ": a colour mask")
    assert "\n" not in str(err.value)


def _format_layout(root, writers):
    """One case per (case id, writer): writer(path_without_extension, pixels) -> written path."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    pixels = {}
    for i, (cid, write) in enumerate(writers.items()):
        arr = (np.arange(12 * 10).reshape(12, 10) * (37 + i)) % 250 + 3
        pixels[cid] = write(os.path.join(root, "images", cid), arr)
    _write_csv(os.path.join(root, "labels.csv"), [[cid, "yes" if i % 2 else "no"] for i, cid in enumerate(writers)])
    return pixels


def _save(ext, dtype, scale=1, **kw):
    def write(stem, arr):
        values = (arr * scale).astype(dtype)
        Image.fromarray(values).save(stem + ext, **kw)
        return values
    return write


def test_bmp_tiff_and_16_bit_png_convert(tmp_path):
    root = str(tmp_path / "formats")
    pixels = _format_layout(root, {"bmp8": _save(".bmp", np.uint8), "png16": _save(".png", np.uint16, 250),
                                   "tif8": _save(".tif", np.uint8), "tiff16": _save(".tiff", np.uint16, 250)})
    folder = convert(root, str(tmp_path / "raw"), 713, "Formats", clip_percentiles=None)
    assert _dataset_json(folder)["channel_names"] == {"0": "rescale_to_0_1"}
    for cid, values in pixels.items():
        out = _array(folder, f"imagesTr/{cid}_0000.nii.gz")
        assert out.shape == (12, 10) and np.array_equal(out, values.astype(np.float32)), cid
    assert pixels["png16"].max() > 255


def test_multipage_tiff_and_unknown_format_are_one_clear_error_each(tmp_path):
    root = str(tmp_path / "pages")
    _format_layout(root, {"a": _save(".png", np.uint8), "b": _save(".png", np.uint8), "c": _save(".png", np.uint8)})
    os.remove(os.path.join(root, "images", "c.png"))
    pages = [Image.fromarray(np.full((12, 10), v, np.uint8)) for v in (1, 2)]
    tiff = os.path.join(root, "images", "c.tif")
    pages[0].save(tiff, save_all=True, append_images=pages[1:])
    with pytest.raises(ConversionError) as err:
        convert(root, str(tmp_path / "raw"), 714, "Pages")
    assert str(err.value) == f"{tiff}: multi-page image (2 pages); store one 2D image per file"
    os.remove(tiff)
    odd = os.path.join(root, "images", "c.xyz")
    open(odd, "w").write("not an image")
    with pytest.raises(ConversionError) as err:
        convert(root, str(tmp_path / "raw"), 714, "Pages")
    assert str(err.value).startswith(f"{odd}: unknown image format") and "\n" not in str(err.value)
    os.remove(odd)
    pages[0].save(os.path.join(root, "images", "c.png"))
    open(os.path.join(root, "images", "notes.txt"), "w").write("notes beside the images are skipped")
    convert(root, str(tmp_path / "raw"), 714, "Pages")


# ------------------------------------------------------------------------------ 3 channels train
def test_three_channel_dataset_plans_and_trains_one_step(tmp_path, nnunet_paths):
    from nnunet_mtl.planning import plan_and_preprocess
    from tests.helpers import TINY, TinyDataset, make_trainer
    root = colour_layout(str(tmp_path / "rgb_train"), n=8, size=(32, 32))
    folder = convert(root, nnunet_paths["nnUNet_raw"], 715, "RgbTrain")
    plans = plan_and_preprocess(715, "plain", ("2d",), shrink=TINY["2d"], verify_integrity=False)
    name = os.path.basename(folder)
    ds = TinyDataset(715, name, "2d", plans, folder, os.path.join(nnunet_paths["nnUNet_preprocessed"], name),
                     nnunet_paths["nnUNet_results"])
    trainer = make_trainer(ds)
    batch = next(trainer.dataloader_train)
    assert batch["data"].shape[1] == 3
    out = trainer.train_step(batch)
    assert np.isfinite(out["loss"])
