"""Grad-CAM explanations for the image-level heads, on whole cases, 2D and 3D.

Why this shape:
* The heads pool whole tiles, so a case-level map must be built like nnU-Net builds case-level
  logits: one map per sliding-window tile, stitched with the same Gaussian weights.
* ``pytorch_grad_cam`` supplies the hooks and the per-method weighting (Grad-CAM, Grad-CAM++,
  HiResCAM, 2D and 3D), but its ``__call__`` min-max scales every image; tiles must keep their
  relative scale to be stitched, so we call its ``get_cam_image`` on the captured activations and
  gradients and upsample ourselves.
* The stitched map lives in the preprocessed (transposed, cropped, resampled) geometry; nnU-Net's
  own export steps (probability resampling, crop revert, transpose back) bring it to the image's.
"""
from __future__ import annotations

import importlib.util
import logging
import os
from typing import Dict, Optional, Sequence

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from acvl_utils.cropping_and_padding.bounding_boxes import insert_crop_into_image
from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
from torch import nn

from nnunet_mtl.conversion.file_names import safe_name
from nnunet_mtl.io_utils import atomic_save_image, atomic_write_json
from nnunet_mtl.inference import loader, tiling
from nnunet_mtl.inference.loader import ModelFolderError
from nnunet_mtl.inference.masks import read_mask_array
from nnunet_mtl.model.pooling import resolve_stages
from nnunet_mtl.model.network import unwrap
from nnunet_mtl.targets import Target, TargetSpec, TargetSpecError

log = logging.getLogger(__name__)

if importlib.util.find_spec("pytorch_grad_cam") is None:  # fail at import, as callers probe by importing
    raise ImportError("nnunet_mtl.outputs.explain needs the grad-cam package (pip install grad-cam)")

METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM"}  # pytorch_grad_cam


def _cam_class(method: str):
    """Imported on use: pytorch_grad_cam pulls in OpenCV (seconds), which callers that only
    import this module (the pipeline) should not pay for."""
    import pytorch_grad_cam
    return getattr(pytorch_grad_cam, METHODS[check_method(method)])


class ExplainError(ValueError):
    """Bad input for an explanation; the message names the file, target, class or stage."""


# ------------------------------------------------------------------------------ one tile
class HeadLogits(nn.Module):
    """Input tile -> one head's raw outputs: the classifier-shaped model pytorch_grad_cam expects. Runs the
    network's ``pooled`` (encoder; the decoder too for heads that pool with the predicted foreground, which is
    detached, so the map explains the encoder features) and the head on the tile's pools."""

    def __init__(self, network: nn.Module, target: str):
        super().__init__()
        self.network = unwrap(network)
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        head = self.network.heads[self.target]
        return head(self.network.pooled(x, head.request)[1])


def check_method(method: str) -> str:
    key = str(method).lower().replace("_", "").replace("pp", "++").replace("plusplus", "++")
    if key not in METHODS:
        raise ExplainError(f"unknown method {method!r} (use one of {sorted(METHODS)})")
    return key


def resolve_stage(network: nn.Module, target: str, stage: Optional[int] = None) -> int:
    """Encoder stage to explain, as a non-negative index. Default: the deepest stage the head reads.
    A stage deeper than every stage the head reads gets no gradient, so it is refused."""
    net = unwrap(network)
    if target not in net.heads:
        raise ExplainError(f"unknown target {target!r} (the network has heads {sorted(net.heads)})")
    head_stages = net.heads[target].request.stages
    if stage is None:
        return max(head_stages)
    try:
        (idx,) = resolve_stages((int(stage),), len(net.encoder.output_channels))
    except ValueError as e:
        raise ExplainError(str(e)) from None
    if idx > max(head_stages):
        raise ExplainError(f"target {target!r}: stage {stage} lies deeper than the stages its head reads "
                           f"{list(head_stages)} and gets no gradient")
    return idx


class TileCAM:
    """Raw (unscaled, ReLU'd) class activation map of one tile, upsampled to the tile's size.
    Use as a context manager: the hooks live only while maps are computed, and the weights are
    frozen meanwhile (the gradient flows through the input instead), so no weight gradients are
    computed or left behind on a network that may be shared."""

    def __init__(self, network: nn.Module, target: str, stage: int, method: str = "gradcam"):
        self.model = HeadLogits(network, target)
        self.layer = self.model.network.encoder.stages[stage]
        self.cam = _cam_class(method)(self.model, [self.layer])
        self._frozen = []

    def __enter__(self):
        self._frozen = [p for p in self.model.parameters() if p.requires_grad]
        for p in self._frozen:
            p.requires_grad_(False)
        return self

    def __exit__(self, *exc):
        for p in self._frozen:
            p.requires_grad_(True)
        self.cam.activations_and_grads.release()
        return False

    def __call__(self, x: torch.Tensor, class_index: int) -> np.ndarray:
        hooks = self.cam.activations_and_grads
        with torch.inference_mode(False), torch.enable_grad():
            x = x.detach().clone().float().requires_grad_(True)  # a normal tensor even from inference mode
            outputs = hooks(x)
            outputs[:, class_index].sum().backward()
            acts, grads = hooks.activations[0].numpy(), hooks.gradients[0].numpy()
        cam = np.maximum(self.cam.get_cam_image(x, self.layer, None, acts, grads, False), 0)  # (b, *spatial)
        mode = "bilinear" if cam.ndim == 3 else "trilinear"
        up = F.interpolate(torch.from_numpy(np.ascontiguousarray(cam, dtype=np.float32))[:, None],
                           size=tuple(x.shape[2:]), mode=mode, align_corners=False)
        return up[:, 0].clamp_min(0).numpy()


# ------------------------------------------------------------------------------ whole case
def cam_for_preprocessed(network: nn.Module, predictor, data: torch.Tensor, target: str, class_index: int,
                         stage: Optional[int] = None, method: str = "gradcam", mirror_axes=None) -> np.ndarray:
    """Map of one preprocessed case ``(c, *spatial)`` -> ``(*spatial)``, with the network's current weights:
    one map per tile and mirror (flipped back), stitched by the sliding window (``tiling``) as logits are,
    unscaled."""
    data = torch.as_tensor(data)
    stage = resolve_stage(network, target, stage)
    padded, slicers, revert = predictor.padded_tiles(data)
    device = next(unwrap(network).parameters()).device
    with TileCAM(network, target, stage, method) as tile_cam:
        cam, _ = tiling.sliding_window(lambda x, _: (torch.from_numpy(tile_cam(x, class_index))[:, None], None), padded,
                                       slicers, predictor.configuration_manager.patch_size, 1, mirror_axes,
                                       predictor.use_gaussian, device, torch.device("cpu"), dtype=torch.float32)
    return cam[0].numpy()[tuple(revert[1:])]


def fold_networks(predictor):
    """The predictor's folds in turn: its network with each fold's weights (heads included) loaded, as nnU-Net
    loads them."""
    net = predictor.mtl_network
    for p in predictor.list_of_parameters or [None]:
        if p is not None:
            net.load_state_dict(p)
        yield net


def ensemble_cam(predictor, data: torch.Tensor, target: str, class_index: int, stage: Optional[int] = None,
                 method: str = "gradcam", mirror_axes=None) -> np.ndarray:
    """Mean map over the predictor's folds (``fold_networks``)."""
    maps = [cam_for_preprocessed(net, predictor, data, target, class_index, stage, method, mirror_axes)
            for net in fold_networks(predictor)]
    return np.mean(maps, axis=0)


def map_to_original(cam: np.ndarray, predictor, properties: dict) -> np.ndarray:
    """Preprocessed-geometry map -> the image's array geometry, through nnU-Net's export steps
    (probability resampling, crop revert, transpose back). Outside the crop the map is 0."""
    pm, cm = predictor.plans_manager, predictor.configuration_manager
    spacing_t = [properties["spacing"][i] for i in pm.transpose_forward]
    shape_cropped = properties["shape_after_cropping_and_before_resampling"]
    current = cm.spacing if len(cm.spacing) == len(shape_cropped) else [spacing_t[0], *cm.spacing]
    resampled = cm.resampling_fn_probabilities(cam[None].astype(np.float32), shape_cropped, current, spacing_t)
    resampled = np.asarray(resampled.cpu() if torch.is_tensor(resampled) else resampled, dtype=np.float32)
    full = insert_crop_into_image(np.zeros(properties["shape_before_cropping"], dtype=np.float32), resampled[0],
                                  properties["bbox_used_for_cropping"])
    return np.clip(np.asarray(full).transpose(pm.transpose_backward), 0, None)


def write_map_image(arr: np.ndarray, properties: dict, path: str) -> str:
    """Write a float map (reader's array order, (z, y, x); z == 1 for 2D) as NIfTI with the image's
    geometry: SimpleITK readers keep spacing/origin/direction (and orientation) in 'sitk_stuff';
    other readers only give the spacing."""
    sitk_stuff = properties.get("sitk_stuff")
    if sitk_stuff is not None:
        dims = len(sitk_stuff["spacing"])
        img = sitk.GetImageFromArray(arr[0] if dims == 2 else arr)
        img.SetSpacing(sitk_stuff["spacing"])
        img.SetOrigin(sitk_stuff["origin"])
        img.SetDirection(sitk_stuff["direction"])
        if "original_orientation" in sitk_stuff:
            img = sitk.DICOMOrient(img, sitk_stuff["original_orientation"])
    else:
        flat = arr.shape[0] == 1
        img = sitk.GetImageFromArray(arr[0] if flat else arr)
        spacing = [float(s) for s in properties["spacing"]][1 if flat else 0:]
        img.SetSpacing(spacing[::-1])
        log.warning("%s: the image reader keeps no origin/direction; the map carries the spacing only", path)
    atomic_save_image(lambda tmp: sitk.WriteImage(img, tmp, useCompression=True), path)
    return path


# ------------------------------------------------------------------------------ model and inputs
def load_predictor(model_dir: str, folds=None, checkpoint: str = "checkpoint_final.pth", device: str = "cpu",
                   use_mirroring: bool = True):
    """The engine for a model folder, on torch (maps need gradients); a folder or checkpoint it cannot use is one
    ``ExplainError`` line naming it."""
    if folds is not None:
        folds = [str(f) for f in ([folds] if isinstance(folds, (int, str)) else folds)]
    try:
        return loader.load_predictor(model_dir, folds, checkpoint, device, use_mirroring=use_mirroring,
                                     backend="torch")
    except ModelFolderError as e:
        raise ExplainError(str(e)) from None


def lookup_target(spec: TargetSpec, target: str, where: str) -> Target:
    try:
        return spec[target]
    except (KeyError, TargetSpecError):
        raise ExplainError(f"{where}: unknown target {target!r} (the model has {spec.names})") from None


def resolve_class(target: Target, class_name, probabilities: Optional[np.ndarray], where: str) -> int:
    """Class to explain: the named one, or the predicted one; regression targets have one output."""
    if not target.is_classification:
        if class_name not in (None, "", 0, "0"):
            raise ExplainError(f"{where}: target {target.name!r} is a regression; it has no class {class_name!r}")
        return 0
    if class_name is None:
        return int(np.argmax(probabilities))
    if isinstance(class_name, str) and class_name.strip().isdigit() and class_name.strip() not in target.classes:
        class_name = int(class_name)
    try:
        return target.class_index(class_name)
    except TargetSpecError as e:
        raise ExplainError(f"{where}: {e}") from None


def preprocess(predictor, image_files: Sequence[str]):
    """nnU-Net's own preprocessing of the raw image files -> (data tensor, properties)."""
    for f in image_files:
        if not os.path.isfile(f):
            raise ExplainError(f"image file {f} does not exist")
    cm = predictor.configuration_manager
    if cm.previous_stage_name is not None:
        raise ExplainError("cascade configurations (previous stage segmentation) are not supported")
    pre = cm.preprocessor_class(verbose=False)
    data, _, props = pre.run_case(list(image_files), None, predictor.plans_manager, cm, predictor.dataset_json)
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32)), props




# ------------------------------------------------------------------------------ public entry point
def explain_case(model_dir: str, image_files: Sequence[str], output_prefix: str, target: str,
                 class_name=None, method: str = "gradcam", stage: Optional[int] = None, folds=None,
                 checkpoint: str = "checkpoint_final.pth", device: str = "cpu", mask_file: Optional[str] = None,
                 top_k: int = 3, use_mirroring: bool = True, predictor=None) -> Dict[str, str]:
    """Explain one case's head decision; return the written paths.

    Writes ``{output_prefix}_{target}-{class}_{method}`` + ``_cam.nii.gz`` (map in [0, 1] with the
    image's geometry), ``_overlay.png`` (2D: image + map; 3D: the ``top_k`` strongest slices), for
    2D also ``_cam.png``, and ``.json`` (class, probabilities, stage, raw scale). The outline is
    ``mask_file`` if given, else the predicted segmentation's foreground. ``stage=None`` means the
    deepest stage the head reads. Pass a loaded ``predictor`` to explain many cases cheaply."""
    method = check_method(method)
    image_files = [image_files] if isinstance(image_files, str) else list(image_files)
    if predictor is None:
        predictor = load_predictor(model_dir, folds, checkpoint, device, use_mirroring)
    where = str(model_dir)
    tgt = lookup_target(predictor.spec, target, where)
    stage_idx = resolve_stage(next(fold_networks(predictor)), target, stage)
    if class_name is not None:
        resolve_class(tgt, class_name, None, where)  # fail before the expensive part
    if mask_file is not None and not os.path.isfile(mask_file):
        raise ExplainError(f"mask file {mask_file} does not exist")
    data, props = preprocess(predictor, image_files)

    logits, heads = predictor.predict_case(data, safe_name(os.path.basename(output_prefix)))
    raw_outputs = np.asarray(heads.outputs[target], dtype=float)
    # what predictions.csv shows for this case: calibrated when the folds have calibration files
    outputs = np.asarray(predictor.calibrated_outputs(heads.outputs)[target], dtype=float)
    class_index = resolve_class(tgt, class_name, outputs, where)
    mask = _outline(predictor, logits, props, mask_file, image_files[0])
    mirror_axes = predictor.allowed_mirroring_axes if predictor.use_mirroring else None
    cam = map_to_original(ensemble_cam(predictor, data, target, class_index, stage_idx, method, mirror_axes),
                          predictor, props)
    raw_max = float(cam.max())
    cam = cam / raw_max if raw_max > 0 else cam

    label = tgt.classes[class_index] if tgt.is_classification else "value"
    base = f"{output_prefix}_{safe_name(target)}-{safe_name(label)}_{method.replace('++', 'pp')}"
    image = predictor.plans_manager.image_reader_writer_class().read_images(image_files[:1])[0][0]
    title = f"{target}: {label} ({method}, stage {stage_idx})"
    if tgt.is_classification:
        title += f", p={outputs[class_index]:.2f}"
    paths = {"cam_nifti": write_map_image(cam, props, base + "_cam.nii.gz")}
    paths.update(_write_pngs(image, cam, mask, props["spacing"], base, title, top_k))
    summary = {"images": image_files, "model": str(model_dir), "target": target, "class": label,
               "class_index": class_index, "method": method, "stage": stage_idx,
               "folds": len(predictor.list_of_parameters), "raw_max": raw_max, "outputs": outputs.tolist(),
               "outputs_uncalibrated": raw_outputs.tolist(), "probabilities_calibrated": predictor.outputs_calibrated,
               "slices_shown": paths.pop("slices"), "outline": "mask_file" if mask_file else "predicted segmentation"}
    if tgt.is_classification:
        summary["probabilities"] = dict(zip(tgt.classes, outputs.tolist()))
    atomic_write_json(base + ".json", summary)
    paths["json"] = base + ".json"
    return paths


def _outline(predictor, logits, props: dict, mask_file: Optional[str], image_file: str) -> np.ndarray:
    """The structure to outline, in the image's array geometry: the given mask, else nnU-Net's own
    segmentation export of the logits just predicted."""
    if mask_file is None:
        return convert_predicted_logits_to_segmentation_with_correct_shape(
            logits.float(), predictor.plans_manager, predictor.configuration_manager, predictor.label_manager, props)
    mask = read_mask_array(mask_file, predictor.plans_manager.image_reader_writer_class())  # PNG or nnU-Net's
    expected = tuple(props["shape_before_cropping"][i] for i in predictor.plans_manager.transpose_backward)
    if mask.shape != expected:
        raise ExplainError(f"mask file {mask_file} has shape {mask.shape}, the image {image_file} {expected}")
    return mask


def _write_pngs(image: np.ndarray, cam: np.ndarray, mask: np.ndarray, spacing, base: str, title: str,
                top_k: int) -> dict:
    """2D (one slice): map PNG + overlay; 3D: overlay of the top_k strongest slices."""
    from nnunet_mtl.outputs import explain_overlay
    if cam.shape[0] == 1:
        return {"cam_png": explain_overlay.save_map_png(cam[0], base + "_cam.png"),
                "overlay_png": explain_overlay.overlay_2d(image[0], cam[0], mask[0], spacing[1:],
                                                          base + "_overlay.png", title),
                "slices": [0]}
    slices = explain_overlay.strongest_slices(cam, top_k)
    return {"overlay_png": explain_overlay.overlay_3d(image, cam, mask, spacing, slices, base + "_overlay.png", title),
            "slices": slices}
