"""The one engine and the one readout, on tiny random networks (no model folder, seconds): pooled features add
over tiles, a fitted head computes scikit-learn's probabilities, heads say in their state dict how they read,
the heads-only pass equals the mask pass, batched tiles equal nnU-Net's loop, and the masks are nnU-Net's own."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet
from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

from nnunet_mtl.inference.predictor import nnUNetPredictorMTL
from nnunet_mtl.inference.tiling import mirror_flips, tile_weights
from nnunet_mtl.model.heads import Head
from nnunet_mtl.model.network import MTLNetwork
from nnunet_mtl.model.pooling import PoolRequest, add_sums, features, pool_sums
from nnunet_mtl.targets import CLASSIFICATION, REGRESSION, CaseTable, Target, TargetSpec
from nnunet_mtl.training.linear_fit import FitError, fit_heads_from_features, fit_target, write_into_head

SPEC = TargetSpec((Target("finding", CLASSIFICATION, classes=("absent", "present")), Target("size", REGRESSION)))
PATCH = {2: (32, 32), 3: (8, 16, 16)}
BOTH = ("global", "foreground")


def tiny_mtl(dim: int, seed: int, pools=("global",), stages=(-1,)) -> MTLNetwork:
    torch.manual_seed(seed)
    conv, norm = (torch.nn.Conv2d, torch.nn.InstanceNorm2d) if dim == 2 else (torch.nn.Conv3d, torch.nn.InstanceNorm3d)
    unet = PlainConvUNet(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=conv, kernel_sizes=3,
                         strides=[1, 2, 2], num_classes=3, norm_op=norm, norm_op_kwargs={"affine": True},
                         nonlin=torch.nn.LeakyReLU, deep_supervision=False, n_conv_per_stage=2,
                         n_conv_per_stage_decoder=2)
    return MTLNetwork(unet, SPEC, stages, 0.2, pools).eval()


def stub_predictor(dim: int, tile_batch: int = 1, folds: int = 2, mirroring: bool = True,
                   pools=("global",)) -> nnUNetPredictorMTL:
    """Our predictor around a random tiny network, ``folds`` sets of weights (seeded), no model folder."""
    p = nnUNetPredictorMTL(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                           perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False,
                           tile_batch=tile_batch)
    p.network = tiny_mtl(dim, 0, pools)
    p.list_of_parameters = [tiny_mtl(dim, s, pools).state_dict() for s in range(folds)]
    p.configuration_manager = SimpleNamespace(patch_size=list(PATCH[dim]))
    p.label_manager = SimpleNamespace(num_segmentation_heads=3, has_regions=False)
    p.allowed_mirroring_axes = tuple(range(dim))
    p.dataset_json = {}
    return p


def case(dim: int, seed: int = 0) -> torch.Tensor:
    shape = (1, 1, 40, 50) if dim == 2 else (1, 12, 16, 20)  # 4 tiles each; 2D: nnU-Net's slicers pick the slice
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32))


# ------------------------------------------------------------------------------------------------ pooling
def test_pool_sums_add_over_tiles_and_the_foreground_pool_falls_back():
    request = PoolRequest((0,), BOTH)
    skip = torch.zeros(1, 2, 4, 4)
    skip[:, 0, :2] = 10.0               # channel 0 is 10 on the top half, 0 elsewhere
    skip[:, 1] = 3.0                    # channel 1 is constant
    fg = torch.zeros(1, 4, 4)
    fg[:, :2] = 1.0                     # the model sees foreground on the top half only
    first = pool_sums([skip], None, request, fg)  # weights None: every voxel 1, as a training patch
    second = pool_sums([skip * 0 + 1.0], torch.ones(1, 4, 4), request, torch.zeros(1, 4, 4))  # no foreground
    x = features(add_sums(first, second), (0,), BOTH)[0]
    np.testing.assert_allclose(x[:2], [(5.0 + 1.0) / 2, (3.0 + 1.0) / 2])   # global: both tiles, equal weight
    np.testing.assert_allclose(x[2:], [10.0, 3.0])                        # foreground: only its voxels
    alone = features(second, (0,), BOTH)[0]
    np.testing.assert_allclose(alone[2:], alone[:2])                       # no foreground: the global pool
    with pytest.raises(ValueError, match="unknown pool"):
        PoolRequest((0,), ("mask",))


def test_the_measures_pool_gives_each_structures_volume_and_the_intensity_inside():
    """The segmentation's own measurements (no encoder stage): per structure its soft voxel count and fraction,
    the mean and spread of the image inside; they add over tiles like the other pools."""
    request = PoolRequest((0,), ("measures",))
    image = torch.arange(16.0).view(1, 1, 4, 4)
    probs = torch.zeros(1, 2, 4, 4)
    probs[:, 0, :2] = 1.0                 # structure 1: the top half (values 0..7)
    probs[:, 1, 3, :2] = 1.0              # structure 2: two voxels (12, 13)
    skip = torch.zeros(1, 2, 4, 4)
    x = features(pool_sums([skip], None, request, patch=(4, 4), structures=probs, image=image), (0,), ("measures",))
    np.testing.assert_allclose(x[0], [8, 2, 0.5, 0.125, 3.5, 12.5, np.std(np.arange(8.0)), 0.5], rtol=1e-5)
    half = pool_sums([skip], torch.full((1, 4, 4), 0.5), request, patch=(4, 4), structures=probs, image=image)
    both = features(add_sums(half, half), (0,), ("measures",))
    np.testing.assert_allclose(both, x, rtol=1e-5)   # two tiles sharing every voxel: the case once
    with pytest.raises(ValueError, match="measures need"):
        pool_sums([skip], None, request, patch=(4, 4))


def test_a_head_reading_the_measures_has_their_width_and_survives_its_checkpoint():
    net = tiny_mtl(2, 1, pools=("global", "measures"))
    head = net.heads["finding"]
    assert head.fc.in_features == 16 + 2 * (2 + 2)   # bottleneck 16 + 2 structures x (volume, fraction, mean, sd)
    assert net.heads_need_segmentation
    built = tiny_mtl(2, 2)
    built.load_state_dict(net.state_dict())
    x = case(2)[:, :, :32, :32].permute(1, 0, 2, 3)
    assert all(torch.equal(net.read(net.pooled(x)[1])[k], built.read(built.pooled(x)[1])[k]) for k in SPEC.names)


@pytest.mark.parametrize("dim", [2, 3])
def test_a_cases_pools_are_the_means_of_its_stitched_features(dim):
    """Each tile's shares of its voxels (its Gaussian over the sum of the Gaussians covering the voxel) add up to 1
    everywhere, so a case's pools weigh every voxel once; a case of one tile is pooled as a training patch."""
    predictor = stub_predictor(dim, folds=1)
    padded, slicers, _ = predictor.padded_tiles(case(dim))
    shares = tile_weights(padded.shape[1:], slicers, PATCH[dim], True, torch.device("cpu"))
    total = torch.zeros(padded.shape[1:])
    for sl, w in zip(slicers, shares):
        total[sl[1:]] += w
    assert len(slicers) >= 4 and torch.allclose(total, torch.ones_like(total), atol=1e-5)
    one_tile = case(dim)[(slice(None),) * (4 - len(PATCH[dim])) + tuple(slice(0, p) for p in PATCH[dim])]
    x = one_tile[None] if dim == 3 else one_tile.permute(1, 0, 2, 3)
    with torch.inference_mode():
        as_patch = predictor.network.pooled(x)[1]
    as_case = predictor.case_pools(one_tile)[0]
    assert all(torch.allclose(as_case[k], as_patch[k], rtol=1e-5, atol=1e-5) for k in as_patch)


# ------------------------------------------------------------------------------------------------ fitted heads
@pytest.mark.parametrize("classes", [("no", "yes"), ("a", "b", "c"), ("a", "b", "c", "never")])
def test_a_fitted_head_computes_the_estimators_probabilities(classes):
    """Binary, multinomial, and a class no training case has (probability 0, as scikit-learn gives it)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6))
    present = [c for c in classes if c != "never"]
    target = Target("t", CLASSIFICATION, classes=classes)
    ids = [f"c{i:02d}" for i in range(60)]
    labels = {c: {"t": present[int(np.argmax(x[i, :len(present)]))]} for i, c in enumerate(ids)}
    table = CaseTable.from_mapping(TargetSpec((target,)), labels)
    estimator = fit_target(target, x[:45], ids[:45], table)
    head = Head([3, 3], (0, 1), ("global",), len(classes), dropout=0.2).eval()
    write_into_head(head, estimator, target)
    probs = head.to_output(head.readout(torch.from_numpy(x[45:]).float())).detach().numpy()
    expected = np.zeros((15, len(classes)))
    expected[:, [classes.index(present[c]) for c in estimator[-1].classes_]] = estimator.predict_proba(x[45:])
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_a_fitted_regression_head_computes_the_ridge_prediction_and_a_missing_label_is_skipped():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(40, 5))
    target = Target("v", REGRESSION, allow_missing=True)
    ids = [f"c{i:02d}" for i in range(40)]
    table = CaseTable.from_mapping(TargetSpec((target,)), {c: {"v": None if i % 7 == 0 else float(3 * x[i, 0] + 1)}
                                                          for i, c in enumerate(ids)})
    estimator = fit_target(target, x, ids, table)
    head = Head([5], (0,), ("global",), 1, regression=True).eval()
    write_into_head(head, estimator, target)
    value = head.to_output(head.readout(torch.from_numpy(x).float()))[:, 0].detach().numpy()
    np.testing.assert_allclose(value, estimator.predict(x), rtol=1e-4, atol=1e-4)


def test_each_target_reads_the_pools_its_cv_prefers_and_the_choice_helps_on_held_out_cases():
    """Two pools of 32 noise features each plus the measures of one structure (volume, fraction, mean and spread
    of the image inside): a class carried by one foreground feature, a volume by the volume. Chosen on the training cases only, each target reads the pools that carry it, its
    head computes that estimator (other columns weigh 0) and does better on held-out cases than one fit on
    every column."""
    from sklearn.metrics import roc_auc_score
    rng = np.random.default_rng(3)
    n, n_train = 240, 120
    head_args = dict(encoder_channels=[32], stages=(0,), pools=("global", "foreground", "measures"))
    spec = TargetSpec((Target("texture", CLASSIFICATION, classes=("plain", "textured")), Target("ml", REGRESSION)))
    x = rng.normal(size=(n, 68))
    texture = rng.integers(0, 2, n)
    x[:, 32] += 2.0 * texture                       # a foreground-pool feature carries the class
    volume = rng.normal(3.0, 0.5, n)
    x[:, 64] = volume * 1000                        # a measure: the structure's voxel count
    ids = [f"c{i:03d}" for i in range(n)]
    table = CaseTable.from_mapping(spec, {c: {"texture": ("plain", "textured")[texture[i]],
                                              "ml": float(volume[i] + rng.normal(0, 0.05))} for i, c in enumerate(ids)})

    def held_out(select):
        heads = {"texture": Head(num_outputs=2, measures_width=4, measures_structures=1, **head_args).eval(),
                 "ml": Head(num_outputs=1, regression=True, measures_width=4, measures_structures=1,
                            **head_args).eval()}
        chosen = fit_heads_from_features(heads, spec, x[:n_train], ids[:n_train], table, select_pools=select)
        test = torch.from_numpy(x[n_train:]).float()
        p = heads["texture"].to_output(heads["texture"].readout(test))[:, 1].detach().numpy()
        v = heads["ml"].to_output(heads["ml"].readout(test))[:, 0].detach().numpy()
        return chosen, roc_auc_score(texture[n_train:], p), np.corrcoef(v, volume[n_train:])[0, 1], heads

    chosen, auc, r, heads = held_out(True)
    assert "foreground" in chosen["texture"]["pools"] and "global" not in chosen["texture"]["pools"]
    assert chosen["ml"]["pools"] == ["measures_volume"]  # not the intensities beside it
    assert heads["ml"].fc.weight[0, :64].abs().max() == 0  # the pools it does not read weigh nothing
    _, auc_all, r_all, _ = held_out(False)
    assert auc >= auc_all - 0.01 and r > r_all, (auc, auc_all, r, r_all)
    assert auc > 0.8 and r > 0.95


def test_too_few_cases_of_a_class_is_one_clear_error():
    target = Target("t", CLASSIFICATION, classes=("no", "yes"))
    ids = [f"c{i}" for i in range(5)]
    table = CaseTable.from_mapping(TargetSpec((target,)), {c: {"t": "yes" if i == 0 else "no"} for i, c in
                                                           enumerate(ids)})
    with pytest.raises(FitError, match=r"at least 2 training cases .*'yes': 1"):
        fit_target(target, np.zeros((5, 3)), ids, table)


def test_heads_say_in_their_state_dict_how_they_read():
    """A checkpoint whose heads read all stages and both pools loads into a network built to read the bottleneck;
    a checkpoint from before the read buffers loads as the network was built."""
    fitted = tiny_mtl(2, 1, pools=BOTH, stages=(0, 1, 2))
    built = tiny_mtl(2, 2)
    built.load_state_dict(fitted.state_dict())
    assert built.heads["finding"].read_config == {"stages": [0, 1, 2], "pools": list(BOTH)}
    x = case(2)[:, :, :32, :32].permute(1, 0, 2, 3)
    a, b = fitted.pooled(x)[1], built.pooled(x)[1]
    assert all(torch.equal(fitted.read(a)[k], built.read(b)[k]) for k in SPEC.names)
    old = {k: v for k, v in tiny_mtl(2, 3).state_dict().items()
           if not k.endswith(("stages", "pools", "feature_mean", "feature_scale"))}
    again = tiny_mtl(2, 4)
    again.load_state_dict(old)   # strict: the read buffers are not missing
    assert again.heads["finding"].read_config == {"stages": [2], "pools": ["global"]}


# ------------------------------------------------------------------------------------------------ the engine
@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("pools", [("global",), ("foreground", "global"), ("global", "measures")])
def test_the_heads_only_pass_equals_the_mask_pass(dim, pools):
    """classify's pass (one unmirrored forward per tile, no stitching) gives predict's head outputs; batched
    tiles too. Without a head that reads the segmentation the decoder does not run."""
    data = case(dim)
    predictor = stub_predictor(dim, pools=pools)
    logits, heads = predictor.predict_case(data, "c")
    decoder_calls = []
    hook = predictor.network.decoder.register_forward_hook(lambda *a: decoder_calls.append(1))
    fast = predictor.predict_heads(data, "c")
    hook.remove()
    assert bool(decoder_calls) == ("foreground" in pools or "measures" in pools)
    assert len(heads.folds) == len(fast.folds) == 2
    assert set(heads.outputs) - set(fast.outputs) == {"check_seg_quality"}  # the mask pass also rates the mask
    for k in fast.outputs:
        np.testing.assert_allclose(fast.outputs[k], heads.outputs[k], atol=1e-6)
    batched_logits, batched = stub_predictor(dim, tile_batch=5, pools=pools).predict_case(data, "c")
    for k in heads.outputs:
        np.testing.assert_allclose(batched.outputs[k], heads.outputs[k], atol=1e-5)
    assert torch.allclose(batched_logits.float(), logits.float(), atol=2e-3)  # half-precision accumulator
    assert np.abs(heads.outputs["finding"].sum() - 1) < 1e-5


@pytest.mark.parametrize("dim", [2, 3])
def test_the_mask_pass_is_nnunets_own_loop(dim):
    """Our sliding window gives exactly the logits of nnU-Net's ``_internal_predict_sliding_window_return_logits``."""
    data = case(dim, 1)
    ours = stub_predictor(dim)
    stock = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                            perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    for name in ("list_of_parameters", "configuration_manager", "label_manager", "allowed_mirroring_axes"):
        setattr(stock, name, getattr(ours, name))
    stock.network = tiny_mtl(dim, 0)
    assert torch.equal(ours.predict_logits_from_preprocessed_data(data),
                       stock.predict_logits_from_preprocessed_data(data))


def test_mirror_flips_follow_nnunet_order_and_tile_batch_must_be_positive():
    assert mirror_flips(None) == [()]
    assert mirror_flips((0, 1)) == [(), (2,), (3,), (2, 3)]
    assert len(mirror_flips((0, 1, 2))) == 8
    with pytest.raises(ValueError, match="tile_batch"):
        stub_predictor(2, 0)
