import numpy as np
import pytest
import torch
from dynamic_network_architectures.architectures.unet import PlainConvUNet, ResidualEncoderUNet

from nnunet_mtl.training.losses import HeadLoss, HeadWeightSchedule, inverse_frequency_weights
from nnunet_mtl.model.network import MTLNetwork
from nnunet_mtl.targets import Target, TargetSpec

SPEC = TargetSpec((Target("subtype", "classification", classes=("a", "b", "c")),
                   Target("age", "regression", allow_missing=True)))


def tiny_unet(dim=2, residual=False, ds=True):
    conv = torch.nn.Conv2d if dim == 2 else torch.nn.Conv3d
    norm = torch.nn.InstanceNorm2d if dim == 2 else torch.nn.InstanceNorm3d
    common = dict(input_channels=1, n_stages=3, features_per_stage=[4, 8, 16], conv_op=conv, kernel_sizes=3,
                  strides=[1, 2, 2], num_classes=3, norm_op=norm, nonlin=torch.nn.LeakyReLU, deep_supervision=ds)
    if residual:
        return ResidualEncoderUNet(n_blocks_per_stage=[1, 1, 1], n_conv_per_stage_decoder=[1, 1], **common)
    return PlainConvUNet(n_conv_per_stage=2, n_conv_per_stage_decoder=2, **common)


def test_class_weights_inverse_frequency_hand_count():
    counts = np.array([6, 3, 1])
    w = inverse_frequency_weights(counts, smoothing=1.0)
    raw = np.array([1 / 7, 1 / 4, 1 / 2])
    assert np.allclose(w, raw / ((counts * raw).sum() / counts.sum()))
    assert (counts * w).sum() / counts.sum() == pytest.approx(1.0), "mean weight over the samples is 1"
    assert w[2] > w[1] > w[0]
    w2 = inverse_frequency_weights([4, 1], smoothing=0, power=0.5)
    assert np.allclose(w2, np.array([.5, 1]) / ((4 * .5 + 1) / 5))
    assert np.allclose(inverse_frequency_weights([5, 5], power=0.0), [1, 1])
    assert np.allclose(inverse_frequency_weights([0, 0]), [1, 1])


@pytest.mark.parametrize("batch", [1, 2])
def test_class_weights_act_on_single_class_batches(batch):
    """A batch whose samples share a class must still feel the weights: the gradient a minority batch
    produces, relative to a majority one with the same logits, is the ratio of the class weights."""
    spec = TargetSpec((Target("finding", "classification", classes=("absent", "present")),))
    weights = inverse_frequency_weights([90, 10], smoothing=0.0)
    loss_fn = HeadLoss(spec, {"finding": weights})

    def grad_norm(label):
        logits = torch.zeros(batch, 2, requires_grad=True)
        loss_fn({"finding": logits}, {"finding": torch.full((batch,), label)})[0].backward()
        return logits.grad.abs().sum()

    ratio = grad_norm(1) / grad_norm(0)
    assert float(ratio) == pytest.approx(weights[1] / weights[0], rel=1e-5)
    assert weights[1] / weights[0] == pytest.approx(9.0)
    # the loss is a mean over labelled samples: doubling the batch does not double the gradient per sample
    assert float(grad_norm(0)) == pytest.approx(float(weights[0]) * 1.0, rel=1e-5)


def test_schedule_segmentation_first_then_ramp():
    s = HeadWeightSchedule(warmup_epochs=20, ramp_epochs=10)
    assert s.weights(0) == pytest.approx((0.9, 0.1)) and s.weights(19) == pytest.approx((0.9, 0.1))
    ramp = [s.head_weight(e) for e in range(20, 30)]
    assert all(b > a for a, b in zip(ramp, ramp[1:])) and ramp[-1] == pytest.approx(0.5)
    assert s.weights(500) == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize("dim,residual", [(2, False), (3, True)])
def test_network_keeps_nnunet_contract_and_stock_keys(dim, residual):
    unet = tiny_unet(dim, residual)
    stock_keys = set(unet.state_dict())
    net = MTLNetwork(unet, SPEC)
    assert stock_keys <= set(net.state_dict()), "stock nnU-Net weights must map onto the MTL network"
    assert {k.split(".")[1] for k in net.state_dict() if k.startswith("heads.")} == {"subtype", "age"}
    x = torch.randn(1, 1, *([16] * dim))  # batch size 1 must work (flatten(1), not squeeze)
    seg = net(x)
    assert isinstance(seg, list) and seg[0].shape[1] == 3
    seg2, heads = net(x, with_heads=True)
    assert heads["subtype"].shape == (1, 3) and heads["age"].shape == (1, 1)
    net.decoder.deep_supervision = False
    assert torch.is_tensor(net(x))


def test_multiscale_heads_read_shallow_stages():
    net = MTLNetwork(tiny_unet(), SPEC, head_stages=(0, 1, -1))
    assert net.heads["subtype"].fc.in_features == 4 + 8 + 16
    with pytest.raises(ValueError, match="stage 7 does not exist"):
        MTLNetwork(tiny_unet(), SPEC, head_stages=(7,))


def test_missing_targets_give_no_gradient_and_others_still_train():
    torch.manual_seed(0)
    net = MTLNetwork(tiny_unet(ds=False), SPEC)
    loss_fn = HeadLoss(SPEC, {"subtype": [1.0, 2.0, 3.0]})
    x = torch.randn(2, 1, 16, 16, requires_grad=True)
    _, raw = net(x, with_heads=True)
    targets = {"subtype": torch.tensor([0, 2]), "age": torch.tensor([float("nan"), 40.0])}
    total, parts = loss_fn(raw, targets, {"age": (50.0, 10.0)})
    assert set(parts) == {"subtype", "age"}
    # gradient of the regression loss w.r.t. the sample whose age is missing is exactly zero
    g = torch.autograd.grad(parts_age_loss(loss_fn, raw, targets), x)[0]
    assert torch.all(g[0] == 0) and torch.any(g[1] != 0)
    # a batch where every age is missing: only the classification term remains
    only_cls, parts2 = loss_fn(raw, {"subtype": targets["subtype"], "age": torch.full((2,), float("nan"))})
    assert set(parts2) == {"subtype"}


def parts_age_loss(loss_fn, raw, targets):
    spec_age = TargetSpec((SPEC["age"],))
    return HeadLoss(spec_age)({"age": raw["age"]}, {"age": targets["age"]}, {"age": (50.0, 10.0)})[0]


def test_class_weights_change_the_loss():
    raw = {"subtype": torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]]), "age": torch.zeros(2, 1)}
    y = {"subtype": torch.tensor([0, 2]), "age": torch.full((2,), float("nan"))}
    plain = HeadLoss(SPEC)(raw, y)[0]
    weighted = HeadLoss(SPEC, {"subtype": [0.1, 1.0, 10.0]})(raw, y)[0]
    assert weighted > plain  # the misclassified rare class counts more


@pytest.mark.parametrize("dim,residual,ds", [(2, False, True), (3, True, True), (2, False, False)])
def test_mask_pooled_heads_keep_the_contract(dim, residual, ds):
    unet = tiny_unet(dim, residual, ds)
    stock_keys = set(unet.state_dict())
    net = MTLNetwork(unet, SPEC, head_stages=(0, -1), head_pools=("foreground", "global"))
    assert stock_keys <= set(net.state_dict())
    assert net.heads["subtype"].fc.in_features == 2 * (4 + 16)
    x = torch.randn(1, 1, *([16] * dim))
    seg, raw = net(x, with_heads=True)
    assert isinstance(seg, list) == ds
    assert raw["subtype"].shape == (1, 3) and raw["age"].shape == (1, 1)
    probs = net.outputs_to_predictions(raw)["subtype"]
    assert torch.allclose(probs.sum(1), torch.ones(1))
    raw["subtype"].sum().backward()  # the foreground weights are detached: the decoder gets no head gradient
    assert all(p.grad is None or torch.count_nonzero(p.grad) == 0 for p in net.decoder.seg_layers.parameters())
    net.capture_heads = True
    net.eval()
    with torch.no_grad():
        net(x)
    assert set(net.last_head_outputs) == {"subtype", "age"}


def test_mask_pooling_weights_by_foreground_and_falls_back_to_the_global_pool():
    from nnunet_mtl.model.pooling import PoolRequest, features, foreground_probability, pool_sums
    feats = torch.zeros(2, 1, 4, 4)
    feats[:, :, :2] = 1.0                                       # top half 1, bottom half 0
    logits = torch.full((2, 2, 8, 8), -20.0)
    logits[:, 0] = 20.0                                         # background everywhere ...
    logits[0, 0, :4], logits[0, 1, :4] = -20.0, 20.0           # ... except the top half of sample 0
    fg = foreground_probability(logits, has_regions=False)
    assert fg.shape == (2, 8, 8) and float(fg[0, 0, 0]) == pytest.approx(1.0)
    pools = ("foreground", "global")
    x = features(pool_sums([feats], None, PoolRequest((0,), pools), fg), (0,), pools)
    assert float(x[0, 0]) == pytest.approx(1.0, abs=1e-4)   # only the foreground's features
    assert float(x[1, 0]) == pytest.approx(0.5, abs=1e-4)   # no foreground: the global average
    assert float(x[0, 1]) == pytest.approx(0.5, abs=1e-4)   # and the global pool beside it
    region_fg = foreground_probability(torch.stack([logits[:, 1], logits[:, 1]], 1), has_regions=True)
    assert torch.allclose(region_fg, fg, atol=1e-6)


def test_a_head_reads_the_stages_and_pools_it_is_given():
    """One head class: which stages and pools it reads is configuration (the trainers' ``head_stages`` /
    ``head_pools``), its width follows."""
    net = MTLNetwork(tiny_unet(), SPEC, head_stages=(0, 1, 2), head_pools=("global", "foreground"))
    head = net.heads["subtype"]
    assert head.read_config == {"stages": [0, 1, 2], "pools": ["global", "foreground"]}
    assert head.fc.in_features == 2 * sum(net.encoder.output_channels)
    _, raw = net(torch.randn(2, 1, 16, 16), with_heads=True)
    assert raw["subtype"].shape == (2, 3)
    assert net.outputs_to_predictions(raw)["age"].shape == (2, 1)
    with pytest.raises(ValueError, match="encoder stage 7 does not exist"):
        MTLNetwork(tiny_unet(), SPEC, head_stages=(7,))
