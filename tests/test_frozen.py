"""Heads on a frozen model (nnunet_mtl.frozen): pooling, the feature cache, linear probes."""
import os

import numpy as np
import pytest
import torch

from nnunet_mtl.frozen.extract import EncoderFeatureExtractor, preprocessed_cases, raw_cases
from nnunet_mtl.model.pooling import StagePooler, feature_vector
from nnunet_mtl.frozen.probe import FrozenEncoderProbe, LinearProbe
from nnunet_mtl.targets import CLASSIFICATION, REGRESSION, CaseTable, Target, TargetSpec

pytestmark = pytest.mark.timeout(300)


def test_pools_weight_tiles_and_foreground():
    pooler = StagePooler()
    skip = torch.zeros(1, 2, 4, 4)
    skip[:, 0, :2] = 10.0               # channel 0 is 10 on the top half, 0 elsewhere
    skip[:, 1] = 3.0                    # channel 1 is constant
    fg = torch.zeros(1, 4, 4)
    fg[:, :2] = 1.0                     # the model sees foreground on the top half only
    pooler.add([skip], fg, torch.ones(4, 4))
    pooler.add([skip * 0 + 1.0], torch.zeros(1, 4, 4), torch.ones(4, 4))  # a second tile, no foreground
    out = pooler.result()
    np.testing.assert_allclose(out["global_s0"], [(5.0 + 1.0) / 2, (3.0 + 1.0) / 2])
    np.testing.assert_allclose(out["foreground_s0"], [10.0, 3.0])   # only the foreground voxels count
    assert feature_vector(out).shape == (4,)
    empty = StagePooler()
    empty.add([skip], torch.zeros(1, 4, 4), torch.ones(4, 4))
    np.testing.assert_allclose(empty.result()["foreground_s0"], empty.result()["global_s0"])  # fallback


def test_linear_probe_classification_and_regression_with_missing_values():
    rng = np.random.default_rng(0)
    ids = [f"c{i:02d}" for i in range(40)]
    x = rng.normal(size=(40, 6))
    spec = TargetSpec((Target("cls", CLASSIFICATION, classes=("a", "b", "c")),
                       Target("reg", REGRESSION, allow_missing=True)))
    rows = {c: {"cls": "abc"[int(np.argmax(x[i, :3]))], "reg": None if i % 7 == 0 else float(5 * x[i, 3] + 1)}
            for i, c in enumerate(ids)}
    table = CaseTable.from_mapping(spec, rows)
    probe = LinearProbe(spec).fit(x[:30], ids[:30], table)
    pred = probe.predict(x[30:], ids[30:])
    assert sorted(pred) == ids[30:]
    for c in ids[30:]:
        assert pred[c]["cls"].shape == (3,) and abs(pred[c]["cls"].sum() - 1) < 1e-9
        assert pred[c]["reg"].shape == (1,)
    truth = np.array([rows[c]["reg"] for c in ids[30:] if rows[c]["reg"] is not None])
    guess = np.array([pred[c]["reg"][0] for c in ids[30:] if rows[c]["reg"] is not None])
    assert np.corrcoef(truth, guess)[0, 1] > 0.9


@pytest.fixture(scope="module")
def stock_model(dataset_2d):
    """Stock nnUNetTrainer, fold 0, one epoch of 3 iterations (attributes set like nnUNetTrainer_Xepochs)."""
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
    folder = dataset_2d.model_folder("nnUNetTrainer")
    if not os.path.isfile(os.path.join(folder, "fold_0", "checkpoint_final.pth")):
        t = get_trainer_from_args(str(dataset_2d.id), dataset_2d.configuration, 0, "nnUNetTrainer", dataset_2d.plans,
                                  device=torch.device("cpu"))
        t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch = 1, 3, 1
        maybe_load_checkpoint(t, False, False, None)
        t.run_training()
    return folder


def _data_folder(ds):
    import json
    with open(os.path.join(ds.preprocessed_folder, ds.plans + ".json")) as f:
        ident = json.load(f)["configurations"][ds.configuration]["data_identifier"]
    return os.path.join(ds.preprocessed_folder, ident)


def test_probe_on_a_stock_model_caches_features(stock_model, dataset_2d, tmp_path):
    cases = preprocessed_cases(_data_folder(dataset_2d))
    ids = [c.case_id for c in cases]
    train, test = cases[:7], cases[7:]
    cache = str(tmp_path / "cache")

    first = FrozenEncoderProbe(stock_model, cache_dir=cache).fit(train)
    pred = first.predict(test)
    stats = first.extractor.stats
    assert stats["computed"] == len(ids) and stats["cached"] == 0 and stats["forwards"] >= len(ids)
    assert sorted(pred) == ids[7:]
    classes = first.spec["finding"].classes
    for c in pred:
        assert pred[c]["finding"].shape == (len(classes),) and abs(pred[c]["finding"].sum() - 1) < 1e-9

    second = FrozenEncoderProbe(stock_model, cache_dir=cache).fit(train)   # a new process would do the same
    again = second.predict(test)
    assert second.extractor.stats == {"cached": len(ids), "computed": 0, "forwards": 0}
    assert second.extractor._predictor is None          # the model was not even loaded
    for c in pred:
        np.testing.assert_allclose(again[c]["finding"], pred[c]["finding"])

    # raw images go through the model's own preprocessing and give the same features
    raw = raw_cases({ids[0]: [os.path.join(dataset_2d.raw_folder, "imagesTr", f"{ids[0]}_0000.nii.gz")]})
    ext = EncoderFeatureExtractor(stock_model, cache_dir=str(tmp_path / "raw_cache"))
    from_raw = ext.features(raw)[ids[0]]
    cached = first.extractor.features(cases[:1])[ids[0]]
    np.testing.assert_allclose(feature_vector(from_raw), feature_vector(cached), rtol=1e-3, atol=1e-4)

    # a replaced checkpoint is a new model: its features are recomputed
    ckpt = os.path.join(stock_model, "fold_0", "checkpoint_final.pth")
    st = os.stat(ckpt)
    os.utime(ckpt, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = EncoderFeatureExtractor(stock_model, cache_dir=cache)
    third.features(cases[:1])
    assert third.stats["computed"] == 1
