"""The feature-distance part of ood_score on synthetic pooled features: flags what is unlike the training cases,
about 1 % of held-out training-like cases, and its fold file round-trips."""
import numpy as np

from nnunet_mtl.inference.ood import FILE_NAME, FeatureCheck, load_folds


def _features(rng, n, f=40):
    latent = rng.normal(size=(n, 5))
    mix = np.random.default_rng(7).normal(size=(5, f))
    return 3.0 + latent @ mix + 0.3 * rng.normal(size=(n, f))


def test_flags_noise_and_shuffled_features_not_training_like_ones():
    rng = np.random.default_rng(0)
    check = FeatureCheck.fit(_features(rng, 60), _features(rng, 100))
    like = check.ratio(_features(rng, 1))[0]
    noise = check.ratio(rng.normal(size=(1, 40)) * 5)[0]
    transposed = check.ratio(_features(rng, 1)[:, ::-1])[0]  # the features of a transposed input: another order
    assert like < 1.0 < min(noise, transposed)


def test_false_flag_rate_on_held_out_training_like_cases_is_near_the_level():
    rng = np.random.default_rng(1)
    check = FeatureCheck.fit(_features(rng, 80), _features(rng, 400))
    assert check.flag_rate(_features(rng, 2000)) < 0.04


def test_fewer_cases_than_features_still_fit():
    rng = np.random.default_rng(2)
    check = FeatureCheck.fit(_features(rng, 8, f=300), _features(rng, 4, f=300))
    assert np.isfinite(check.threshold) and check.ratio(rng.normal(size=(1, 300)) * 5)[0] > 1.0


def test_fold_file_round_trips(tmp_path):
    rng = np.random.default_rng(3)
    check = FeatureCheck.fit(_features(rng, 20), _features(rng, 10), stages=(0, 2), pools=("global",))
    check.save(str(tmp_path / "fold_0"))
    assert (tmp_path / "fold_0" / FILE_NAME).is_file()
    assert load_folds([str(tmp_path / "fold_0"), str(tmp_path / "fold_1")]) is None  # a fold without one
    loaded = load_folds([str(tmp_path / "fold_0")])
    assert loaded[0].stages == (0, 2) and loaded[0].pools == ("global",)
    x = _features(rng, 5)
    np.testing.assert_allclose(loaded[0].ratio(x), check.ratio(x), rtol=1e-4)
    assert load_folds([str(tmp_path / "fold_1")]) is None


def test_the_engine_adds_each_folds_feature_score_and_the_mask_score():
    """Through the one engine (a stub of two folds, trained on noise images): each fold's check reads the pooled
    features its heads read; a new noise image is not flagged, a smooth ramp is; the mask is rated too."""
    import torch

    from nnunet_mtl import case_checks
    from nnunet_mtl.inference.checks import EngineChecks
    from nnunet_mtl.model.pooling import features
    from tests.test_engine import case, stub_predictor

    predictor = stub_predictor(2)
    per_case = [[features(s, (2,), ("global",))[0].numpy() for s in predictor.case_pools(case(2, seed))]
                for seed in range(40)]
    checks = [FeatureCheck.fit(np.stack([f[k] for f in per_case[:30]]), np.stack([f[k] for f in per_case[30:]]),
                               stages=(2,), pools=("global",)) for k in range(2)]
    predictor.checks = EngineChecks(seg_threshold=0.0, feature_checks=checks)
    _, heads = predictor.predict_case(case(2, 100), "c")
    assert heads.outputs[case_checks.RAW_FEATURES].shape == (1,)
    row = case_checks.columns_of(heads.outputs)
    assert row[case_checks.OOD_FLAG] == "no" and row[case_checks.SEG_QUALITY_FLAG] == "no"
    ramp = torch.linspace(-3, 3, 50).expand(1, 1, 40, 50).contiguous()
    _, far = predictor.predict_case(ramp, "ramp")
    assert case_checks.columns_of(far.outputs)[case_checks.OOD_FLAG] == "yes"
