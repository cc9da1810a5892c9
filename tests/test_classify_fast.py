"""Classify's heads-only path (encoder + heads, no decoder): the full pass's probabilities where it is exact,
the full pass itself where it is not."""
import numpy as np
import pytest
import torch

from nnunet_mtl.model.heads import MaskPooledHead
from nnunet_mtl.inference.folders import load_predictor
from tests.test_batched_window import stub_predictor

pytestmark = pytest.mark.timeout(600)


def spy(predictor):
    """Counts full passes (predict_case) and encoder-only forwards."""
    calls = {"full": 0, "encoder_only": 0}
    full, net = predictor.predict_case, predictor.network
    forward_heads = net.forward_heads

    def predict_case(*a, **k):
        calls["full"] += 1
        return full(*a, **k)

    def encoder_only(x):
        calls["encoder_only"] += 1
        return forward_heads(x)

    predictor.predict_case, net.forward_heads = predict_case, encoder_only
    return calls


def image(shape, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).normal(0, 1, shape).astype(np.float32))


@pytest.mark.parametrize("aggregation,width,exact", [("foreground_weighted", None, True), ("mean", 150, True),
                                                     ("foreground_weighted", 150, False)])
def test_heads_only_path_equals_the_full_pass(trained_2d, aggregation, width, exact):
    """One tile (any rule) or several with the plain mean: encoder only, same probabilities; several tiles
    weighted by foreground: the full pass."""
    predictor = load_predictor(trained_2d, folds=[0], aggregation=aggregation)
    h, w = predictor.configuration_manager.patch_size
    data = image((1, 1, h, width or w))
    full = predictor.predict_case(data, "c")[1].outputs
    n_tiles = len(predictor._internal_get_sliding_window_slicers(data.shape[1:]))
    assert (n_tiles == 1) is (width is None)
    assert predictor.heads_only_exact(data) is exact
    calls = spy(predictor)
    fast = predictor.predict_heads(data, "c").outputs
    assert calls == ({"full": 0, "encoder_only": 4 * n_tiles} if exact else {"full": 1, "encoder_only": 0})
    assert fast.keys() == full.keys()
    for k in full:
        assert np.allclose(fast[k], full[k], atol=1e-5, rtol=0), k
    if exact:  # mirrors batched into one forward: still the full pass's probabilities
        predictor.tile_batch = 4
        batched = predictor.predict_heads(data, "c").outputs
        assert all(np.allclose(batched[k], full[k], atol=1e-5, rtol=0) for k in full)


def test_heads_reading_the_segmentation_take_the_full_pass():
    """Mask-guided pooling needs the decoder: the fallback, whose outputs are the full pass's."""
    predictor = stub_predictor(2, folds=2, head_class=MaskPooledHead)
    data = image((1, 1, 32, 32))  # one tile
    assert not predictor.heads_only_exact(data)
    full = predictor.predict_case(data, "c")[1].outputs
    calls = spy(predictor)
    fast = predictor.predict_heads(data, "c").outputs
    assert calls == {"full": 1, "encoder_only": 0}
    assert all(np.array_equal(fast[k], full[k]) for k in full)
