"""Grad-CAM explanations: whole-case maps (2D and 3D) in the image's geometry, overlays, CLI, errors,
and a sanity check that can fail: a model trained on a localised signal must point at it."""
import glob
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from PIL import Image

from nnunet_mtl.inference.predictor import nnUNetPredictorMTL
from nnunet_mtl.outputs.explain import (ExplainError, cam_for_preprocessed, ensemble_cam, explain_case, load_predictor,
                                        preprocess, resolve_stage)
from nnunet_mtl.model.network import MTLNetwork
from nnunet_mtl.targets import Target, TargetSpec
from tests.test_losses_and_network import tiny_unet

FINDING = TargetSpec((Target("finding", "classification", classes=("absent", "present")),))


# ---------------------------------------------------------------------------------------- fixtures
def _model_folder(ds, dest: str, n_folds: int = 1) -> str:
    """A model folder written by nnU-Net's own trainer (initialised, untrained): the predictor path
    does not care whether weights are trained, and training is the slow part. Fold k>0 gets
    reseeded heads so fold ensembles are not trivial."""
    from batchgenerators.utilities.file_and_folder_operations import save_json
    from nnunetv2.run.run_training import get_trainer_from_args
    torch.manual_seed(0)
    trainer = get_trainer_from_args(str(ds.id), ds.configuration, 0, "nnUNetTrainerMTL", ds.plans,
                                    device=torch.device("cpu"))
    trainer.initialize()
    save_json(trainer.plans_manager.plans, os.path.join(dest, "plans.json"), sort_keys=False)
    save_json(trainer.dataset_json, os.path.join(dest, "dataset.json"), sort_keys=False)
    for fold in range(n_folds):
        if fold:
            torch.manual_seed(fold)
            for head in trainer.network.heads.values():
                head.fc.reset_parameters()
        os.makedirs(os.path.join(dest, f"fold_{fold}"), exist_ok=True)
        trainer.save_checkpoint(os.path.join(dest, f"fold_{fold}", "checkpoint_final.pth"))
    return dest


@pytest.fixture(scope="module")
def model_2d(dataset_2d, tmp_path_factory):
    return _model_folder(dataset_2d, str(tmp_path_factory.mktemp("explain_model_2d")), n_folds=2)


@pytest.fixture(scope="module")
def model_3d(dataset_3d_resenc, tmp_path_factory):
    return _model_folder(dataset_3d_resenc, str(tmp_path_factory.mktemp("explain_model_3d")))


def _with_geometry(src: str, dest: str, spacing, origin, direction, crop=None) -> str:
    """A copy of a raw image with non-default geometry, so 'same geometry' is a real check."""
    arr = sitk.GetArrayFromImage(sitk.ReadImage(src))
    if crop is not None:
        arr = arr[crop]
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    img.SetDirection(direction)
    sitk.WriteImage(img, dest)
    return dest


def _assert_same_geometry(a: str, b: str):
    ia, ib = sitk.ReadImage(a), sitk.ReadImage(b)
    assert ia.GetSize() == ib.GetSize()
    assert np.allclose(ia.GetSpacing(), ib.GetSpacing())
    assert np.allclose(ia.GetOrigin(), ib.GetOrigin())
    assert np.allclose(ia.GetDirection(), ib.GetDirection())


def _png_ok(path: str):
    assert os.path.getsize(path) > 0
    with Image.open(path) as im:
        assert im.size[0] > 10 and im.size[1] > 10
        assert np.asarray(im.convert("L")).std() > 0, f"{path} is blank"


@pytest.fixture(scope="module")
def image_2d(dataset_2d, tmp_path_factory):
    src = sorted(glob.glob(os.path.join(dataset_2d.raw_folder, "imagesTs", "*_0000.nii.gz")))[0]
    dest = str(tmp_path_factory.mktemp("explain_in") / "cxr_0000.nii.gz")
    # anisotropic spacing: nnU-Net resamples (y 0.7 -> 0.5), so the map must be resampled back
    return _with_geometry(src, dest, (0.5, 0.7), (12.0, -7.5), (-1.0, 0.0, 0.0, 1.0))


# ---------------------------------------------------------------------------------------- 2D, real model
def test_2d_map_has_image_geometry_and_overlays(model_2d, image_2d, tmp_path):
    paths = explain_case(model_2d, [image_2d], str(tmp_path / "case"), "finding", folds=[0])
    _assert_same_geometry(paths["cam_nifti"], image_2d)
    cam = sitk.GetArrayFromImage(sitk.ReadImage(paths["cam_nifti"]))
    assert cam.min() >= 0 and cam.max() == pytest.approx(1.0, abs=1e-5)
    for key in ("cam_png", "overlay_png"):
        _png_ok(paths[key])
    with Image.open(paths["cam_png"]) as im:
        assert im.size == sitk.ReadImage(image_2d).GetSize()
    summary = json.load(open(paths["json"]))
    probs = summary["probabilities"]
    assert summary["class"] == max(probs, key=probs.get), "default class must be the predicted one"
    assert summary["stage"] == 3 and summary["method"] == "gradcam"


def test_2d_maps_differ_between_classes_and_methods(model_2d, image_2d, tmp_path):
    predictor = load_predictor(model_2d, folds=[0], use_mirroring=False)
    maps = {}
    for cls in ("absent", "present"):
        p = explain_case(model_2d, [image_2d], str(tmp_path / "c"), "finding", class_name=cls, predictor=predictor)
        assert os.path.basename(p["cam_nifti"]) == f"c_finding-{cls}_gradcam_cam.nii.gz"
        maps[cls] = sitk.GetArrayFromImage(sitk.ReadImage(p["cam_nifti"]))
    assert not np.allclose(maps["absent"], maps["present"], atol=1e-3)

    data, _ = preprocess(predictor, [image_2d])
    cam = {(m, s): cam_for_preprocessed(predictor.network, predictor, data, "finding", 1, s, m)
           for m in ("gradcam", "gradcam++", "hirescam") for s in (None, -2)}
    assert not np.allclose(cam["gradcam", None], cam["gradcam++", None], rtol=0, atol=1e-3 * cam["gradcam", None].max())
    # at the pooled stage the head's gradient is spatially constant (a tile's features are averaged), so
    # HiResCAM equals Grad-CAM; one stage shallower the gradient varies over space and the two must part
    assert np.allclose(cam["gradcam", None], cam["hirescam", None], rtol=1e-4, atol=1e-6)
    assert not np.allclose(cam["gradcam", -2], cam["hirescam", -2], rtol=0, atol=1e-3 * cam["gradcam", -2].max())


def test_fold_ensemble_is_mean_of_fold_maps(model_2d, image_2d):
    predictor = load_predictor(model_2d, folds=[0, 1], use_mirroring=False)
    data, _ = preprocess(predictor, [image_2d])
    both = ensemble_cam(predictor, data, "finding", 1)
    singles = []
    for params in predictor.list_of_parameters:
        predictor.network.load_state_dict(params)
        singles.append(cam_for_preprocessed(predictor.network, predictor, data, "finding", 1))
    assert both.shape == data.shape[1:]
    assert not np.allclose(singles[0], singles[1])
    assert np.allclose(both, np.mean(singles, axis=0), atol=1e-6)


def test_cli_writes_outputs_and_reports_bad_input(model_2d, image_2d, tmp_path, capsys):
    from nnunet_mtl.cli.explain import main
    out = tmp_path / "out"
    assert main(["-m", model_2d, "-i", image_2d, "-o", str(out), "--target", "finding", "--class", "present",
                 "--method", "hirescam", "--stage", "-2", "-f", "0", "--disable_tta"]) == 0
    written = sorted(os.listdir(out))
    assert "cxr_finding-present_hirescam_cam.nii.gz" in written and "cxr_finding-present_hirescam_overlay.png" in written
    assert json.load(open(out / "cxr_finding-present_hirescam.json"))["stage"] == 2
    assert main(["-m", model_2d, "-i", image_2d, "-o", str(out), "--target", "finding", "--class", "maybe"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'maybe'" in err[0] and "'finding'" in err[0]


@pytest.mark.parametrize("kwargs,message", [
    (dict(target="age"), "unknown target 'age'"),
    (dict(target="finding", class_name="maybe"), "unknown class 'maybe'"),
    (dict(target="finding", method="lime"), "unknown method 'lime'"),
    (dict(target="finding", stage=9), "stage 9 does not exist"),
    (dict(target="finding", image="missing_0000.nii.gz"), "image file missing_0000.nii.gz does not exist"),
    (dict(target="finding", model="no_such_model"), "no_such_model: model folder not found"),
    (dict(target="finding", folds=[7]), "fold_7"),
    (dict(target="finding", mask_file="small_mask"), "small_mask.nii.gz has shape"),
])
def test_bad_input_gives_one_line_errors(model_2d, image_2d, tmp_path, kwargs, message):
    image = kwargs.pop("image", image_2d)
    model = kwargs.pop("model", model_2d)
    kwargs.setdefault("folds", [0])
    if kwargs.get("mask_file") == "small_mask":
        kwargs["mask_file"] = str(tmp_path / "small_mask.nii.gz")
        sitk.WriteImage(sitk.Image(10, 10, sitk.sitkUInt8), kwargs["mask_file"])
    with pytest.raises(ExplainError, match=message.replace("(", r"\(")) as e:
        explain_case(model, [image], str(tmp_path / "x"), **kwargs)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------------------- 3D, real model
def test_3d_map_geometry_and_strongest_slice_overlay(model_3d, dataset_3d_resenc, tmp_path):
    tr = sorted(glob.glob(os.path.join(dataset_3d_resenc.raw_folder, "imagesTr", "*_0000.nii.gz")))[0]
    label = os.path.join(dataset_3d_resenc.raw_folder, "labelsTr", os.path.basename(tr).replace("_0000", ""))
    crop = (slice(4, 20), slice(4, 36), slice(4, 36))  # one sliding-window tile keeps the test fast
    geometry = dict(spacing=(1.0, 1.0, 2.0), origin=(3.0, -20.0, 55.5), direction=(-1, 0, 0, 0, 1, 0, 0, 0, 1),
                    crop=crop)
    image = _with_geometry(tr, str(tmp_path / "vol_0000.nii.gz"), **geometry)
    mask = _with_geometry(label, str(tmp_path / "vol.nii.gz"), **geometry)
    paths = explain_case(model_3d, [image], str(tmp_path / "vol"), "subtype", class_name="subtype1",
                         method="gradcam++", mask_file=mask, top_k=2)
    _assert_same_geometry(paths["cam_nifti"], image)
    cam = sitk.GetArrayFromImage(sitk.ReadImage(paths["cam_nifti"]))
    assert cam.max() == pytest.approx(1.0, abs=1e-5)
    _png_ok(paths["overlay_png"])
    summary = json.load(open(paths["json"]))
    mass = cam.reshape(cam.shape[0], -1).sum(1)
    assert len(summary["slices_shown"]) == 2 and set(summary["slices_shown"]) == set(np.argsort(-mass)[:2].tolist())
    assert summary["class"] == "subtype1" and summary["outline"] == "mask_file"


# ---------------------------------------------------------------------------------------- tiny networks
class _Tiling:
    """The engine's tiling (patch, step, Gaussian) that cam_for_preprocessed asks of a predictor, for networks
    outside nnU-Net."""

    def __init__(self, patch):
        from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager
        self.predictor = nnUNetPredictorMTL(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                                            device=torch.device("cpu"), allow_tqdm=False)
        self.predictor.configuration_manager = ConfigurationManager({"patch_size": list(patch), "architecture": {}})


def _blob(shape, center, radius, amplitude):
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    return amplitude * np.exp(-((yy - center[0]) ** 2 + (xx - center[1]) ** 2) / (2 * radius ** 2))


def _synthetic(rng, n, size=64):
    """Noise + a dark blob in the bottom-right quadrant (all images, a distractor); class 'present'
    adds a bright blob somewhere in the top-left quadrant."""
    x = rng.normal(0, 0.3, (n, 1, size, size)).astype(np.float32)
    y = rng.integers(0, 2, n)
    h = size // 2
    for i in range(n):
        x[i, 0] += _blob((size, size), rng.integers(h + 4, size - 4, 2), 3, -2.0)
        if y[i]:
            x[i, 0] += _blob((size, size), rng.integers(4, h - 4, 2), 3, 2.0)
    return torch.from_numpy(x), torch.from_numpy(y)


def _plain_unet_without_norm():
    """Like tests/test_losses_and_network.tiny_unet but without InstanceNorm: a model this small
    learns a blob's presence from instance-norm statistics that shift the whole image, which
    spreads its evidence (and any faithful map) everywhere; without norm the evidence is local."""
    return PlainConvUNet(input_channels=1, n_stages=3, features_per_stage=[8, 16, 16], conv_op=torch.nn.Conv2d,
                         kernel_sizes=3, strides=[1, 2, 2], num_classes=2, norm_op=None, nonlin=torch.nn.LeakyReLU,
                         deep_supervision=False, n_conv_per_stage=2, n_conv_per_stage_decoder=1, conv_bias=True)


@pytest.fixture(scope="module")
def blob_model():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = MTLNetwork(_plain_unet_without_norm(), FINDING, head_dropout=0.0)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(30):
        x, y = _synthetic(rng, 8)
        loss = torch.nn.functional.cross_entropy(net(x, with_heads=True)[1]["finding"], y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    x, y = _synthetic(np.random.default_rng(1), 64)
    with torch.no_grad():
        acc = (net(x, with_heads=True)[1]["finding"].argmax(1) == y).float().mean().item()
    assert acc > 0.9, f"the tiny model did not learn the blob task (accuracy {acc:.2f}); the CAM check needs it"
    return net


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "hirescam"])
def test_cam_mass_sits_where_the_class_signal_is(blob_model, method):
    rng = np.random.default_rng(2)
    for trial in range(3):
        img = rng.normal(0, 0.3, (64, 64)) + _blob((64, 64), (32 + 14, 32 + 12), 3, -2.0)
        center = rng.integers(8, 24, 2)
        img += _blob((64, 64), center, 3, 2.0)
        data = torch.from_numpy(img.astype(np.float32))[None, None]  # nnU-Net 2D layout: (c, 1, y, x)
        cam = cam_for_preprocessed(blob_model, _Tiling((32, 32)).predictor, data, "finding", 1,
                                   method=method)[0]
        assert cam.shape == (64, 64) and cam.sum() > 0
        inside = cam[:32, :32].sum() / cam.sum()
        assert inside > 0.5, f"{method}: only {inside:.0%} of the 'present' map lies in the signal quadrant"
        yy, xx = np.unravel_index(np.argmax(cam), cam.shape)
        assert np.hypot(yy - center[0], xx - center[1]) < 10, f"{method}: peak {yy, xx} far from blob {center}"


def test_mirrored_map_is_flip_equivariant(blob_model):
    """With mirroring the map averages the flipped-back maps of every mirror (as the logits are averaged): the map of
    a flipped image is the flipped map, and it differs from the unmirrored map."""
    img = np.random.default_rng(3).normal(0, 0.3, (32, 32)) + _blob((32, 32), (8, 11), 3, 2.0)
    x = torch.from_numpy(img.astype(np.float32))[None, None]  # off-centre, so flips move the map
    tiling = _Tiling((32, 32)).predictor
    a = cam_for_preprocessed(blob_model, tiling, x, "finding", 1, 2, mirror_axes=(0, 1))[0]
    b = cam_for_preprocessed(blob_model, tiling, torch.flip(x, (3,)), "finding", 1, 2, mirror_axes=(0, 1))[0]
    plain = cam_for_preprocessed(blob_model, tiling, x, "finding", 1, 2)[0]
    assert np.allclose(a, np.flip(b, 1), atol=1e-5)
    assert plain.max() > 0 and not np.allclose(a, plain, atol=1e-4 * plain.max())


def test_3d_tiny_network_tiles_and_stitches():
    torch.manual_seed(0)
    net = MTLNetwork(tiny_unet(3, residual=True, ds=False), FINDING).eval()
    data = torch.randn(1, 20, 24, 24)
    cam = cam_for_preprocessed(net, _Tiling((16, 16, 16)).predictor, data, "finding", 0, method="hirescam")
    assert cam.shape == (20, 24, 24) and np.isfinite(cam).all() and cam.min() >= 0 and cam.max() > 0


def test_stage_defaults_to_deepest_head_stage_and_refuses_unreachable_ones():
    net = MTLNetwork(tiny_unet(2), FINDING, head_stages=(0, 1))
    assert resolve_stage(net, "finding") == 1
    assert resolve_stage(net, "finding", -3) == 0
    with pytest.raises(ExplainError, match="stage -1 lies deeper"):
        resolve_stage(net, "finding", -1)
    with pytest.raises(ExplainError, match="unknown target 'age'"):
        resolve_stage(net, "age")


def test_2d_probabilities_shown_are_the_calibrated_ones_the_csv_has(model_2d, image_2d, tmp_path):
    """With calibration files in the folds, the map's title/JSON must show what predictions.csv and
    nnunet_mtl_classify show for the same image, not the raw head output."""
    import shutil
    from nnunet_mtl.calibration.store import FoldCalibration
    from nnunet_mtl.calibration.temperature import TemperatureFit
    from nnunet_mtl.inference.folders import classify_files
    model = str(tmp_path / "model")
    shutil.copytree(model_2d, model)
    for fold in (0, 1):
        FoldCalibration({"finding": TemperatureFit(4.0, 20, 0.9, 0.6, True, "")}).save(
            os.path.join(model, f"fold_{fold}"))
    predictor = load_predictor(model, folds=[0, 1], use_mirroring=False)
    summary = json.load(open(explain_case(model, [image_2d], str(tmp_path / "c"), "finding", predictor=predictor)["json"]))
    (row,) = list(classify_files(predictor, [image_2d], str(tmp_path / "work")))
    np.testing.assert_allclose(summary["outputs"], row["outputs"]["finding"], atol=1e-6)
    assert summary["probabilities_calibrated"] is True
    assert not np.allclose(summary["outputs"], summary["outputs_uncalibrated"], atol=1e-4)
