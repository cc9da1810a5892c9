"""Batched sliding window (tiles x mirrors per forward): same logits, masks and case outputs as nnU-Net's loop."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet

from nnunet_mtl.inference.tiling import mirror_combinations
from nnunet_mtl.model.heads import PooledHead
from nnunet_mtl.model.network import MTLNetwork
from nnunet_mtl.inference.predictor import nnUNetPredictorMTL
from nnunet_mtl.targets import Target, TargetSpec

SPEC = TargetSpec((Target("finding", "classification", classes=("absent", "present")),
                   Target("size", "regression")))
PATCH = {2: (32, 32), 3: (8, 16, 16)}


def tiny_mtl(dim: int, seed: int, head_class=PooledHead) -> MTLNetwork:
    torch.manual_seed(seed)
    conv, norm = (torch.nn.Conv2d, torch.nn.InstanceNorm2d) if dim == 2 else (torch.nn.Conv3d, torch.nn.InstanceNorm3d)
    unet = PlainConvUNet(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=conv, kernel_sizes=3,
                         strides=[1, 2, 2], num_classes=3, norm_op=norm, norm_op_kwargs={"affine": True},
                         nonlin=torch.nn.LeakyReLU, deep_supervision=False, n_conv_per_stage=2,
                         n_conv_per_stage_decoder=2)
    return MTLNetwork(unet, SPEC, head_class=head_class).eval()


def stub_predictor(dim: int, tile_batch: int = 1, folds: int = 2, head_class=PooledHead, mirroring: bool = True,
                   aggregation: str = "foreground_weighted") -> nnUNetPredictorMTL:
    """Our predictor around a random tiny network, ``folds`` sets of weights (seeded), no model folder."""
    p = nnUNetPredictorMTL(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                           perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False,
                           head_aggregation=aggregation, tile_batch=tile_batch)
    p.network = tiny_mtl(dim, 0, head_class)
    p.list_of_parameters = [tiny_mtl(dim, s, head_class).state_dict() for s in range(folds)]
    p.configuration_manager = SimpleNamespace(patch_size=list(PATCH[dim]))
    p.label_manager = SimpleNamespace(num_segmentation_heads=3, has_regions=False)
    p.allowed_mirroring_axes = tuple(range(dim))
    p.dataset_json = {}
    return p


def case(dim: int, seed: int = 0) -> torch.Tensor:
    shape = (1, 1, 40, 50) if dim == 2 else (1, 12, 16, 20)  # 4 tiles each; 2D: nnU-Net's slicers pick the slice
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32))


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    return 1.0 if not x.any() and not y.any() else 2 * (x & y).sum() / (x.sum() + y.sum())


def test_mirror_combinations_follow_nnunet_order():
    assert mirror_combinations(None) == [()]
    assert mirror_combinations((0, 1)) == [(), (2,), (3,), (2, 3)]
    assert len(mirror_combinations((0, 1, 2))) == 8


@pytest.mark.parametrize("dim,tile_batch", [(2, 3), (3, 5)])
def test_batched_window_equals_nnunet_loop(dim, tile_batch):
    """Two folds, several tiles, batches that split one tile's mirrors across forwards."""
    data = case(dim)
    ref_logits, ref = stub_predictor(dim, 1).predict_case(data, "c")
    logits, heads = stub_predictor(dim, tile_batch).predict_case(data, "c")
    assert len(heads.folds) == 2 and len(heads.folds[0].foreground) >= 4
    for a, b in zip(ref.folds, heads.folds):
        assert np.allclose(a.foreground, b.foreground, atol=1e-5)
        for k in a.outputs:
            assert np.allclose(a.outputs[k], b.outputs[k], atol=1e-5)
    for k in ref.outputs:
        assert np.allclose(ref.outputs[k], heads.outputs[k], atol=1e-5), k
    assert torch.allclose(ref_logits.float(), logits.float(), atol=2e-3)  # half-precision accumulator
    m_ref, m = ref_logits.argmax(0).numpy(), logits.argmax(0).numpy()
    assert all(dice(m_ref, m, label) >= 0.999 for label in (1, 2))


def test_batched_window_without_mirroring_and_outside_a_case():
    data = case(2, 1)
    ref = stub_predictor(2, 1, folds=1, mirroring=False)
    new = stub_predictor(2, 4, folds=1, mirroring=False)
    assert torch.allclose(ref.predict_logits_from_preprocessed_data(data).float(),
                          new.predict_logits_from_preprocessed_data(data).float(), atol=2e-3)
    a, b = ref.predict_case(data, "c")[1], new.predict_case(data, "c")[1]
    assert np.allclose(a.outputs["finding"], b.outputs["finding"], atol=1e-5)


def test_tile_batch_must_be_positive():
    with pytest.raises(ValueError, match="tile_batch"):
        stub_predictor(2, 0)
