"""OpenVINO CPU backend: the same outputs as torch (logits ~1e-5, masks Dice >= 0.999, case probabilities 1e-4),
each fold its own compiled weights, torch for anything that is not a patch, converted models reused from the cache."""
import os

import numpy as np
import pytest
import torch

from nnunet_mtl.case_checks import is_check_key
from nnunet_mtl.cli.backend_args import BACKEND_ENV, backend_default
from nnunet_mtl.inference import openvino_backend
from nnunet_mtl.inference.folders import classify_files
from nnunet_mtl.inference.loader import load_predictor
from nnunet_mtl.inference import provenance as prediction_provenance
from nnunet_mtl.model.network import unwrap
from tests.test_engine import PATCH, case, stub_predictor, tiny_mtl

pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(not openvino_backend.available(), reason="openvino is not installed")]


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv(openvino_backend.CACHE_ENV, str(tmp_path / "ov_cache"))


def wrapped(dim, seed=0, pools=("global",)):
    net = tiny_mtl(dim, seed, pools)
    return net, openvino_backend.OpenVINONetwork(net, 1, PATCH[dim], threads=2)


def _close(a: dict, b: dict, atol: float) -> bool:
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=atol, rtol=1e-5) for k in a)


@pytest.mark.parametrize("dim,pools", [(2, ("foreground", "global")), (3, ("global",)), (2, ("global", "measures"))])
def test_the_compiled_pooled_pass_equals_torch(dim, pools):
    """The mask pass (segmentation + pool sums) and the heads-only pass (pool sums; no decoder without a
    foreground pool) on OpenVINO give torch's numbers; the heads read them in torch."""
    net, ov = wrapped(dim, pools=pools)
    x = torch.randn(3, 1, *PATCH[dim])
    with torch.inference_mode():
        seg, sums = net.pooled(x, None, True)
        seg_ov, sums_ov = ov.pooled(x, None, True)
        _, heads_only = ov.pooled(x)
        plain = ov(x)
    assert seg_ov.shape == seg.shape and torch.allclose(seg_ov, seg, atol=1e-4)
    assert torch.equal(plain, seg_ov)
    assert _close(sums_ov, sums, 1e-3) and _close(heads_only, sums, 1e-3)
    assert _close(net.read(sums_ov), net.read(sums), 1e-5)
    assert unwrap(ov) is net  # the heads' read-out stays torch's


def test_each_fold_runs_its_own_weights_and_other_shapes_run_in_torch():
    net, ov = wrapped(2)
    folds = [tiny_mtl(2, s).state_dict() for s in (1, 2)]
    x = torch.randn(1, 1, *PATCH[2])
    other = torch.randn(1, 1, 48, 32)  # not the patch: torch, exactly
    with torch.inference_mode():
        for params in folds + folds:  # back to an earlier fold: its compiled model again
            ov.load_state_dict(params)
            assert torch.allclose(ov(x), net(x), atol=1e-4)
            assert torch.equal(ov(other), net(other))
    assert len(ov._compiled) == 2


def test_converted_models_are_reused_from_the_cache(monkeypatch):
    x = torch.randn(1, 1, *PATCH[3])
    _, first = wrapped(3)
    with torch.inference_mode():
        expected = first(x)

    def no_conversion(self, kind):
        raise AssertionError("converted again although the cache holds this model")

    monkeypatch.setattr(openvino_backend.OpenVINONetwork, "_convert", no_conversion)
    _, second = wrapped(3)  # same seed, same weights
    with torch.inference_mode():
        assert torch.equal(second(x), expected)
    _, other_weights = wrapped(3, seed=5)
    with pytest.raises(openvino_backend.BackendError, match="could not convert.*converted again"):
        with torch.inference_mode():
            other_weights(x)


@pytest.mark.parametrize("dim", [3])  # 2D: test_load_predictor_... and test_classify_... below
def test_predictor_on_openvino_matches_torch(dim):
    """Two folds, several tiles, 8 mirrors: masks Dice >= 0.999, case outputs within 1e-4; classify's heads-only
    pass too."""
    data = case(dim)
    ref_logits, ref = stub_predictor(dim, 1).predict_case(data, "c")
    p = stub_predictor(dim, 1)
    p.network = openvino_backend.OpenVINONetwork(p.network, 1, PATCH[dim], threads=2)
    logits, heads = p.predict_case(data, "c")
    for k in ref.outputs:
        assert np.allclose(ref.outputs[k], heads.outputs[k], atol=1e-4), k
    m_ref, m = ref_logits.argmax(0).numpy(), logits.argmax(0).numpy()
    assert all(dice(m_ref, m, label) >= 0.999 for label in (1, 2))
    fast = p.predict_heads(data, "c").outputs  # the heads only: no mask, so no seg_quality check
    assert all(np.allclose(fast[k], ref.outputs[k], atol=1e-4) for k in ref.outputs if not is_check_key(k))


def dice(a: np.ndarray, b: np.ndarray, label: int) -> float:
    x, y = a == label, b == label
    return 1.0 if not x.any() and not y.any() else 2 * (x & y).sum() / (x.sum() + y.sum())


def test_backend_choice(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert openvino_backend.resolve_backend("auto", cpu) == "openvino"
    assert openvino_backend.resolve_backend("auto", cuda) == "torch"
    assert openvino_backend.resolve_backend("torch", cpu) == "torch"
    with pytest.raises(ValueError, match="CPU only"):
        openvino_backend.resolve_backend("openvino", cuda)
    with pytest.raises(ValueError, match="unknown backend"):
        openvino_backend.resolve_backend("onnx", cpu)
    monkeypatch.setenv(BACKEND_ENV, "torch")  # the command line's default; the library never reads it
    assert backend_default() == "torch" and openvino_backend.resolve_backend("auto", cpu) == "openvino"
    monkeypatch.setenv(BACKEND_ENV, "onnx")
    with pytest.raises(SystemExit, match="nnunet_mtl_backend='onnx' is not a backend"):
        backend_default()
    monkeypatch.setattr(openvino_backend, "available", lambda: False)
    assert openvino_backend.resolve_backend("auto", cpu) == "torch"
    with pytest.raises(ValueError, match="not installed"):
        openvino_backend.resolve_backend("openvino", cpu)


def test_load_predictor_uses_openvino_on_the_cpu_and_records_it(trained_2d):
    ov = load_predictor(trained_2d, folds=[0])
    plain = load_predictor(trained_2d, folds=[0], backend="torch")
    assert ov.backend == "openvino" and isinstance(ov.network, openvino_backend.OpenVINONetwork)
    assert plain.backend == "torch" and not isinstance(plain.network, openvino_backend.OpenVINONetwork)
    assert prediction_provenance.model_identity(ov)["backend"] == "openvino"
    h, w = plain.configuration_manager.patch_size
    data = torch.from_numpy(np.random.default_rng(0).normal(0, 1, (1, 1, h, w + 40)).astype(np.float32))
    a, b = plain.predict_case(data, "c"), ov.predict_case(data, "c")
    for k in a[1].outputs:
        assert np.allclose(a[1].outputs[k], b[1].outputs[k], atol=1e-4), k
    assert (a[0].argmax(0) == b[0].argmax(0)).float().mean() >= 0.999


def test_cache_keeps_the_newest_models(tmp_path):
    import time
    cache = tmp_path / "cache"
    for i in range(4):  # four retrainings: four weight hashes, oldest first
        (cache / f"entry{i}").mkdir(parents=True)
        os.utime(cache / f"entry{i}", (time.time() - 100 + i, time.time() - 100 + i))
    (cache / ".tmp_inflight").mkdir()  # another run's save in progress: not touched
    openvino_backend._prune(str(cache), 2)
    assert sorted(os.listdir(cache)) == [".tmp_inflight", "entry2", "entry3"]


def test_classify_on_openvino_matches_torch(trained_2d, tmp_path):
    """nnunet_mtl_classify's path (conversion, preprocessing, heads-only pass) on both backends."""
    from PIL import Image
    image = tmp_path / "cxr.png"
    Image.fromarray((np.random.default_rng(3).random((64, 64)) * 255).astype(np.uint8)).save(image)
    rows = {}
    for backend in ("torch", "openvino"):
        predictor = load_predictor(trained_2d, folds=[0], backend=backend)
        [rows[backend]] = list(classify_files(predictor, [str(image)], str(tmp_path / backend)))
    assert "error" not in rows["openvino"], rows["openvino"]
    for k, v in rows["torch"]["outputs"].items():
        assert np.allclose(rows["openvino"]["outputs"][k], v, atol=1e-4), k
