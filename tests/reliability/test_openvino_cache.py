"""Issue 26, the OpenVINO backend: a damaged cache entry is found, removed and converted again (one line); an
unwritable cache folder or a broken OpenVINO install is one line and torch under 'auto', and one error line when
OpenVINO was asked for by name; either shows when the model is loaded, before any case is predicted."""
import contextlib
import importlib.machinery
import io
import os
import types

import numpy as np
import pytest
import torch
from PIL import Image

from nnunet_mtl.cli import classify as classify_cli
from nnunet_mtl.inference import openvino_backend
from nnunet_mtl.inference.loader import load_predictor
from tests.test_engine import PATCH, tiny_mtl

pytestmark = [pytest.mark.timeout(600),
              pytest.mark.skipif(not openvino_backend.available(), reason="openvino is not installed")]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "ov_cache"
    monkeypatch.setenv(openvino_backend.CACHE_ENV, str(path))
    return path


def _entries(cache):
    return [d for d in os.listdir(cache) if not d.startswith(".")]


def test_a_damaged_cache_entry_is_rebuilt_with_one_line(cache, capsys):
    net = tiny_mtl(2, 0)
    x = torch.randn(1, 1, *PATCH[2])
    with torch.inference_mode():
        expected = net(x)
        first, _ = openvino_backend.attach(net, 1, PATCH[2], "openvino", torch.device("cpu"), (), True)
        assert torch.allclose(first(x), expected, atol=1e-4)
    first.close()
    [entry] = _entries(cache)
    weights = cache / entry / "model.bin"
    blob = bytearray(weights.read_bytes())
    blob[len(blob) // 2: len(blob) // 2 + 64] = bytes(64)  # same size, other bytes: a bit-rotted or torn file
    weights.write_bytes(bytes(blob))
    capsys.readouterr()

    second, backend = openvino_backend.attach(tiny_mtl(2, 0), 1, PATCH[2], "openvino", torch.device("cpu"), (), True)
    err = capsys.readouterr().err.strip().splitlines()
    assert backend == "openvino"
    assert len(err) == 1 and entry in err[0] and "removed and converted again" in err[0]
    with torch.inference_mode():
        assert torch.allclose(second(x), expected, atol=1e-4)  # the damaged weights were not used
    second.close()
    assert _entries(cache) == [entry]
    assert openvino_backend._files_digest(str(cache / entry)) == openvino_backend._read_manifest(str(cache / entry))


def test_an_unwritable_cache_is_one_line_and_torch_under_auto(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")  # unwritable for any user, root included
    monkeypatch.setenv(openvino_backend.CACHE_ENV, str(blocker / "ov"))
    net = tiny_mtl(2, 0)
    got, backend = openvino_backend.attach(net, 1, PATCH[2], "auto", torch.device("cpu"), (), True)
    err = capsys.readouterr().err.strip().splitlines()
    assert got is net and backend == "torch"
    assert len(err) == 1 and str(blocker) in err[0] and "running on torch instead" in err[0]
    with pytest.raises(openvino_backend.BackendError, match=f"OpenVINO cache {blocker}.*cannot be written"):
        openvino_backend.attach(net, 1, PATCH[2], "openvino", torch.device("cpu"), (), True)


def _broken_openvino(monkeypatch):
    """An openvino that imports but whose runtime does not start (a missing native library, a bad wheel)."""
    fake = types.ModuleType("openvino")
    fake.__spec__ = importlib.machinery.ModuleSpec("openvino", None)

    def core():
        raise ImportError("libopenvino.so.2026: cannot open shared object file")

    fake.Core = core
    monkeypatch.setitem(os.sys.modules, "openvino", fake)


def test_a_broken_install_is_one_line_and_torch_under_auto(cache, monkeypatch, capsys):
    _broken_openvino(monkeypatch)
    net = tiny_mtl(2, 0)
    for prepare in (True, False, None):
        got, backend = openvino_backend.attach(net, 1, PATCH[2], "auto", torch.device("cpu"), (), prepare)
        err = capsys.readouterr().err.strip().splitlines()
        assert got is net and backend == "torch"
        assert len(err) == 1 and "OpenVINO runtime does not start" in err[0] and "libopenvino.so" in err[0]
    with pytest.raises(openvino_backend.BackendError, match="runtime does not start"):
        openvino_backend.attach(net, 1, PATCH[2], "openvino", torch.device("cpu"), ())


def test_the_commands_go_on_with_torch_or_stop_with_one_line(trained_2d, tmp_path, monkeypatch):
    """nnunet_mtl_classify with a broken install: 'auto' classifies on torch (the same numbers as --backend
    torch), '--backend openvino' is one error line and exit status 2; load_predictor records the backend used."""
    image = tmp_path / "cxr.png"
    Image.fromarray((np.random.default_rng(3).random((64, 64)) * 255).astype(np.uint8)).save(image)

    def classify(*extra):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = classify_cli.main(["-m", trained_2d, "-f", "0", *extra, str(image)])
        return rc, [line.split("\t")[:3] for line in out.getvalue().splitlines()], err.getvalue()  # no seconds

    rc, reference, _ = classify("--backend", "torch")
    assert rc == 0
    monkeypatch.setenv(openvino_backend.CACHE_ENV, str(tmp_path / "ov_cache"))
    _broken_openvino(monkeypatch)
    rc, out, err = classify("--backend", "auto")
    assert rc == 0 and out == reference
    assert sum("running on torch instead" in line for line in err.splitlines()) == 1
    rc, out, err = classify("--backend", "openvino")
    assert rc == 2 and out == []
    [line] = [ln for ln in err.splitlines() if "error" in ln]
    assert "OpenVINO runtime does not start" in line
    assert load_predictor(trained_2d, folds=[0], backend="auto").backend == "torch"
