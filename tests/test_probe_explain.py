"""Grad-CAM of probe heads: the fitted probe as a torch head (``frozen.probe_module``) scores as scikit-learn
does, and ``explain`` maps it on a tiny trained stock model like a jointly trained head."""
import glob
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_mtl.model.pooling import StagePooler, feature_vector
from nnunet_mtl.frozen.probe import LinearProbe
from nnunet_mtl.frozen.probe_module import ProbeHead
from nnunet_mtl.targets import CLASSIFICATION, REGRESSION, CaseTable, Target, TargetSpec
from tests.test_add_heads import heads, labels_csv  # noqa: F401  (fixtures: probe heads on a tiny stock model)
from tests.test_frozen import stock_model  # noqa: F401

pytestmark = pytest.mark.timeout(600)
PATCH = (8, 8)


def _skips(rng, b=3):
    """Two encoder stages of a tile batch: (b, 4, 8, 8) and (b, 6, 4, 4), and 3-class segmentation logits."""
    return ([torch.tensor(rng.normal(size=(b, 4, 8, 8)), dtype=torch.float32),
             torch.tensor(rng.normal(size=(b, 6, 4, 4)), dtype=torch.float32)],
            torch.tensor(rng.normal(size=(b, 3, *PATCH)) * 3, dtype=torch.float32))


def _pooled(skips, seg, i):
    """What ``StagePooler`` (fitting and prediction) makes of tile ``i`` alone."""
    from nnunetv2.inference.sliding_window_prediction import compute_gaussian
    from nnunet_mtl.model.pooling import foreground_probability
    pooler = StagePooler()
    pooler.add([s[i:i + 1] for s in skips], foreground_probability(seg[i:i + 1], False),
               compute_gaussian(PATCH, sigma_scale=1. / 8, value_scaling_factor=10, device=torch.device("cpu")))
    return pooler.result()


@pytest.mark.parametrize("stages,pools", [(None, ("global", "foreground")), ([-1], ("global",)),
                                          ([1, 0], ("foreground",))])
def test_torch_probe_scores_equal_the_fitted_probe(stages, pools):
    rng = np.random.default_rng(0)
    spec = TargetSpec((Target("two", CLASSIFICATION, classes=("no", "yes")),
                       Target("three", CLASSIFICATION, classes=("a", "b", "c")), Target("reg", REGRESSION)))
    skips, seg = _skips(rng, 40)
    x = np.stack([feature_vector(_pooled(skips, seg, i), stages, pools) for i in range(40)])
    ids = [f"c{i:02d}" for i in range(40)]
    rows = {c: {"two": "yes" if x[i, 0] > np.median(x[:, 0]) else "no", "three": "abc"[int(np.argmax(x[i, :3]))],
                "reg": float(5 * x[i, 1] + 1)} for i, c in enumerate(ids)}
    probe = LinearProbe(spec).fit(x, ids, CaseTable.from_mapping(spec, rows))
    for t in spec:
        head = ProbeHead(probe.models[t.name], t, 2, stages, pools, PATCH, has_regions=False)
        np.testing.assert_allclose(head.features(skips, seg).numpy(), x, rtol=1e-5, atol=1e-5)  # the same pools
        score = head.linear(torch.from_numpy(x)).numpy()
        model = probe.models[t.name]
        if t.name == "two":
            np.testing.assert_allclose(score[:, 1], model.decision_function(x), rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(score[:, 0], -model.decision_function(x), rtol=1e-5, atol=1e-5)
        elif t.name == "three":
            np.testing.assert_allclose(score, model.decision_function(x), rtol=1e-5, atol=1e-5)
            probs = np.exp(score) / np.exp(score).sum(1, keepdims=True)
            np.testing.assert_allclose(probs, model.predict_proba(x), rtol=1e-5, atol=1e-7)
        else:
            np.testing.assert_allclose(score[:, 0], model.predict(x), rtol=1e-5, atol=1e-5)


def test_gradcam_of_probe_heads_has_the_image_shape(heads, dataset_2d, tmp_path):  # noqa: F811
    from nnunet_mtl.outputs.explain import explain_case
    image = sorted(glob.glob(os.path.join(dataset_2d.raw_folder, "imagesTs", "*_0000.nii.gz")))[0]
    paths = explain_case(heads, [image], str(tmp_path / "case"), "finding", device="cpu", use_mirroring=False)
    cam = sitk.GetArrayFromImage(sitk.ReadImage(paths["cam_nifti"]))
    assert cam.shape == sitk.GetArrayFromImage(sitk.ReadImage(image)).shape
    assert np.isfinite(cam).all() and cam.max() > cam.min()
    assert os.path.isfile(paths["overlay_png"])
