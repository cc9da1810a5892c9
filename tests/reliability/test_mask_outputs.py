"""Issue 13, masks come back in the input's format: PNG in, PNG out (lossless, on the input's pixel grid),
found by every consumer through ``file_names.predicted_mask``, and scored by evaluation exactly like the
NIfTI masks of the same prediction."""
import os

import numpy as np
import pytest
import SimpleITK as sitk
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from PIL import Image

from nnunet_mtl.conversion.inference_inputs import prepare_cases
from nnunet_mtl.conversion.file_names import predicted_mask
from nnunet_mtl.inference.folders import predict_folder
from nnunet_mtl.inference.loader import load_predictor
from nnunet_mtl.inference.masks import read_mask_array, to_mask_format, write_png_mask
from nnunet_mtl.synthetic import make_radiograph

pytestmark = pytest.mark.timeout(600)


def _l_shape(h=30, w=50):
    """An asymmetric shape on a non-square grid: any transpose or flip changes it."""
    m = np.zeros((h, w), np.uint8)
    m[2:20, 3:9] = 1
    m[14:20, 3:40] = 1
    return m


def test_png_mask_lies_on_the_input_pixel_grid(tmp_path):
    """Input PNG -> conversion -> nnU-Net's own reader and seg writer (what its export does) -> PNG mask:
    the mask equals the shape drawn in the input's pixels."""
    shape = _l_shape()
    png = str(tmp_path / "case.png")
    Image.fromarray(shape * 200).save(png)
    prepared = prepare_cases([png], str(tmp_path / "conv"), clip_percentiles=None)
    data, props = SimpleITKIO().read_images(prepared.cases["case"])
    out = tmp_path / "out"
    out.mkdir()
    SimpleITKIO().write_seg((data[0] > 100).astype(np.uint8) * 3, str(out / "case.nii.gz"), props)
    path = to_mask_format(str(out), "case", ".nii.gz", ".png", png)
    assert path == predicted_mask(str(out), "case", ".nii.gz") == str(out / "case.png")
    assert not (out / "case.nii.gz").exists()
    with Image.open(path) as im:
        assert im.size == (50, 30) and im.mode == "L"
        assert np.array_equal(np.asarray(im), shape * 3)
    assert read_mask_array(path).shape == (1, 30, 50)


def test_labels_above_255_are_kept_in_16_bit(tmp_path):
    path = str(tmp_path / "m.png")
    labels = _l_shape().astype(np.int64) * 300
    write_png_mask(labels, path)
    assert np.array_equal(np.asarray(Image.open(path)), labels)


def test_a_mask_that_does_not_fit_its_input_is_refused(tmp_path):
    png = str(tmp_path / "input.png")
    Image.fromarray(_l_shape() * 200).save(png)
    sitk.WriteImage(sitk.GetImageFromArray(_l_shape().T.copy()), str(tmp_path / "case.nii.gz"))
    with pytest.raises(RuntimeError, match=r"case\.nii\.gz: mask of shape \(50, 30\) does not match its input"):
        to_mask_format(str(tmp_path), "case", ".nii.gz", ".png", png)
    assert (tmp_path / "case.nii.gz").exists() and not (tmp_path / "case.png").exists()


@pytest.fixture(scope="module")
def png_cases(tmp_path_factory):
    """Non-square PNG radiographs and their ground-truth masks as PNG."""
    root = tmp_path_factory.mktemp("png_cases")
    images, gt = root / "images", root / "gt"
    images.mkdir()
    gt.mkdir()
    rng = np.random.default_rng(3)
    for i in range(3):
        img, mask, _ = make_radiograph(rng, (48, 64), finding=bool(i % 2))
        img = (255 * (img - img.min()) / (np.ptp(img) or 1)).astype(np.uint8)
        Image.fromarray(img).save(images / f"cxr{i}.png")
        Image.fromarray(mask.astype(np.uint8)).save(gt / f"cxr{i}.png")
    return str(images), str(gt)


def test_png_inputs_give_png_masks_scored_like_their_nifti_masks(trained_2d, png_cases, tmp_path):
    from nnunet_mtl.cli.evaluate import run as evaluate_cli
    images, gt = png_cases
    predictor = load_predictor(trained_2d, folds=[0], use_mirroring=False, backend="torch")
    kw = dict(num_processes_preprocessing=1, num_processes_export=1)
    as_png, as_nifti, lines = str(tmp_path / "png"), str(tmp_path / "nifti"), []
    predict_folder(predictor, images, as_png, report=lines.append, **kw)
    predict_folder(predictor, images, as_nifti, mask_format="nifti", **kw)
    cases = ["cxr0", "cxr1", "cxr2"]
    assert sorted(f for f in os.listdir(as_png) if f.endswith((".png", ".nii.gz"))) == [c + ".png" for c in cases]
    for c in cases:
        png = np.asarray(Image.open(os.path.join(as_png, c + ".png")))
        nifti = np.squeeze(sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(as_nifti, c + ".nii.gz"))))
        assert png.shape == (48, 64) and np.array_equal(png, nifti)
    scores = {}
    for name, folder in (("png", as_png), ("nifti", as_nifti)):
        metrics = evaluate_cli(["--validation_data", gt, "--prediction_folder", folder, "--no_plots",
                                "--n_bootstrap", "0", "--output_folder", str(tmp_path / f"eval_{name}")])
        scores[name] = metrics["segmentation"]["labels"]
    assert scores["png"] == scores["nifti"] and scores["png"]["1"]["dsc"]["n"] == 3
    predict_folder(predictor, images, as_png, report=lines.append, **kw)
    predict_folder(predictor, images, as_png, report=lines.append, mask_format="nifti", **kw)
    assert lines[1:] == [f"{as_png}: 0 predicted, 3 kept, 0 removed", f"{as_png}: 3 predicted, 0 kept, 0 removed"]
    assert all(predicted_mask(as_png, c, ".nii.gz") == os.path.join(as_png, c + ".nii.gz") for c in cases)
