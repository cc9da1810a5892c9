"""Temperature scaling, its per-fold file, ECE / Brier with stratified bootstrap CIs, the reliability diagram."""
import json
import math

import numpy as np
import pytest

from nnunet_mtl.calibration.measures import (brier_score, calibration_metrics, expected_calibration_error,
                                             positive_class_ece, stratified_bootstrap)
from nnunet_mtl.calibration.reliability import reliability_diagram
from nnunet_mtl.calibration.store import CALIBRATED_COLUMN, EnsembleCalibration, FoldCalibration, fit_fold
from nnunet_mtl.calibration.temperature import (apply_temperature, combine_temperatures, fit_temperature, nll,
                                                softmax)
from nnunet_mtl.prediction_table import make_row
from nnunet_mtl.targets import CaseTable, Target, TargetSpec


def synthetic(n, n_classes=3, sharpen=1.0, seed=0):
    """True probabilities q per case, labels drawn from q, and a model that outputs softmax(sharpen * log q)
    (sharpen > 1: over-confident; 1: perfectly calibrated)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, size=(n, n_classes))
    q = softmax(logits)
    y = np.array([rng.choice(n_classes, p=row) for row in q])
    return softmax(sharpen * logits), y


def test_temperature_lowers_nll_of_an_overconfident_model_on_held_out_cases():
    probs, y = synthetic(600, sharpen=3.0, seed=1)
    fit = fit_temperature(probs, y)
    assert fit.fitted and fit.reason == ""
    assert 2.4 < fit.temperature < 3.6
    assert fit.nll_after < fit.nll_before - 0.1
    test_probs, test_y = synthetic(600, sharpen=3.0, seed=2)
    calibrated = apply_temperature(test_probs, fit.temperature)
    assert nll(np.log(calibrated), test_y) < nll(np.log(test_probs), test_y) - 0.1
    np.testing.assert_allclose(calibrated.sum(1), 1.0)
    assert (calibrated.argmax(1) == test_probs.argmax(1)).all()
    assert expected_calibration_error(calibrated, test_y) < expected_calibration_error(test_probs, test_y) / 2


def test_a_calibrated_model_keeps_a_temperature_near_one():
    probs, y = synthetic(1500, sharpen=1.0, seed=3)
    fit = fit_temperature(probs, y)
    assert 0.85 < fit.temperature < 1.15
    assert fit.nll_before - fit.nll_after < 0.01


def test_logits_in_give_the_same_temperature_as_probabilities():
    probs, y = synthetic(300, sharpen=2.0, seed=4)
    a = fit_temperature(probs, y).temperature
    b = fit_temperature(np.log(probs) + 7.0, y, from_logits=True).temperature
    assert a == pytest.approx(b, rel=1e-3)


@pytest.mark.parametrize("probs,y,reason", [
    (np.zeros((0, 2)), [], "no validation cases"),
    ([[0.9, 0.1], [0.2, 0.8]], [0, 1], "only 2 validation case(s)"),
    ([[0.9, 0.1]] * 6, [0] * 6, "only 6 validation case(s)"),  # the demo's fold size: too few to fit
    ([[0.9, 0.1]] * 24, [0] * 24, "only one class"),
    ([[0.9, 0.1]] * 22 + [[0.3, 0.7]] * 2, [0] * 22 + [1] * 2, "fewer than two classes have 3"),
    ([[0.9, 0.1]] * 12 + [[0.3, 0.7]] * 12, [0] * 12 + [1] * 12, "perfectly separated"),
])
def test_cases_that_cannot_support_a_fit_keep_t_1_and_say_why(probs, y, reason):
    fit = fit_temperature(np.asarray(probs, dtype=float), y)
    assert fit.temperature == 1.0 and not fit.fitted
    assert reason in fit.reason


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="true class"):
        fit_temperature([[0.5, 0.5]] * 5, [0, 1, 2, 0, 1])
    with pytest.raises(ValueError, match="temperature"):
        apply_temperature([0.5, 0.5], 0.0)


def test_ece_small_for_a_calibrated_set_and_large_for_an_overconfident_one():
    probs, y = synthetic(4000, sharpen=1.0, seed=5)
    assert expected_calibration_error(probs, y) < 0.03
    over, y2 = synthetic(4000, sharpen=4.0, seed=5)
    assert expected_calibration_error(over, y2) > 0.1
    assert brier_score(over, y2) > brier_score(probs, y)


def test_ece_and_brier_by_hand():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.3, 0.7]])
    y = np.array([0, 1, 1, 1])
    # bin 0.9: 2 cases, acc 0.5 -> gap 0.4; bin 0.7: 2 cases, acc 1 -> gap 0.3
    assert expected_calibration_error(probs, y) == pytest.approx(0.35)
    assert brier_score(probs, y) == pytest.approx((0.02 + 1.62 + 0.18 + 0.18) / 4)
    # positive class: p=0.1 (1 of 2 positive) gap .4; p=0.7 (2 of 2) gap .3
    assert positive_class_ece(probs, y) == pytest.approx(0.35)


def test_stratified_bootstrap_keeps_every_class_in_every_resample():
    probs, y = synthetic(12, n_classes=3, seed=6)
    y[:2] = 2  # a rare class
    seen = []
    stratified_bootstrap(lambda p, t: seen.append(np.bincount(t, minlength=3)) or 0.0, probs, y, n=200)
    assert all((c == np.bincount(y, minlength=3)).all() for c in seen)
    m = calibration_metrics(probs, y, n_bootstrap=200)
    assert m["ci95"]["ece"]["low"] <= m["ece"] <= m["ci95"]["ece"]["high"]
    assert m["ci95"]["brier"]["n_valid"] == 200 and "ece_positive_class" not in m


def test_reliability_diagram_is_written(tmp_path):
    probs, y = synthetic(300, n_classes=2, sharpen=3.0, seed=7)
    path = reliability_diagram({"raw": (probs, y), "calibrated": (apply_temperature(probs, 3.0), y)},
                               str(tmp_path / "reliability_subtype.png"), title="subtype")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".tmp_*"))


SPEC = TargetSpec((Target("subtype", "classification", ("a", "b", "c")), Target("age", "regression")))


def _fold_predictions(probs):
    return {f"case_{i:03d}": {"probs": {"subtype": p}} for i, p in enumerate(probs)}


def test_fold_file_round_trip_and_ensemble_application(tmp_path):
    probs, y = synthetic(200, sharpen=2.5, seed=8)
    labels = CaseTable(SPEC, {f"case_{i:03d}": {"subtype": "abc"[k], "age": 1.0} for i, k in enumerate(y)})
    labels.values["case_000"]["subtype"] = None  # unlabelled cases are left out
    cal = fit_fold(SPEC, _fold_predictions(probs), labels)
    assert cal.fits["subtype"].n_cases == 199 and cal.fits["subtype"].temperature > 1.8
    path = cal.save(str(tmp_path / "fold_0"))
    saved = json.load(open(path))
    assert saved["method"] == "temperature_scaling"
    assert set(saved["targets"]["subtype"]) >= {"temperature", "n_cases", "nll_before", "nll_after", "fitted", "reason"}
    FoldCalibration({"subtype": cal.fits["subtype"].__class__(0.5, 10, 1.0, 0.9, True)}).save(str(tmp_path / "fold_1"))
    (tmp_path / "fold_2").mkdir()

    ens = EnsembleCalibration.from_fold_dirs([str(tmp_path / f"fold_{k}") for k in range(3)])
    expected = combine_temperatures([cal.fits["subtype"].temperature, 0.5, 1.0])
    assert ens.temperatures["subtype"] == pytest.approx(expected)
    assert EnsembleCalibration.from_fold_dirs([str(tmp_path / "fold_2")]) is None

    row = make_row(SPEC, "case_x", {"subtype": np.array([0.7, 0.2, 0.1]), "age": np.array([50.0])})
    out = ens.apply_row(SPEC, row)
    calibrated = apply_temperature(np.array([0.7, 0.2, 0.1]), expected)
    assert out["subtype_prob_a"] == pytest.approx(calibrated[0]) and out["subtype"] == "a"
    assert out["age"] == 50.0 and out[CALIBRATED_COLUMN] == "yes" and row["subtype_prob_a"] == 0.7
    outputs = ens.apply_outputs(SPEC, {"subtype": np.array([0.7, 0.2, 0.1]), "age": np.array([50.0])})
    np.testing.assert_allclose(outputs["subtype"], calibrated)


def test_combine_temperatures_is_a_geometric_mean():
    assert combine_temperatures([2.0, 0.5]) == pytest.approx(1.0)
    assert combine_temperatures([]) == 1.0
    assert math.isclose(combine_temperatures([4.0]), 4.0)


def test_calibrate_fold_reads_the_validation_table_and_writes_the_file(tmp_path):
    from nnunet_mtl import prediction_table
    from nnunet_mtl.calibration.store import calibrate_fold
    probs, y = synthetic(60, sharpen=3.0, seed=9)
    rows = [make_row(SPEC, f"case_{i:03d}", {"subtype": p, "age": np.array([1.0])}) for i, p in enumerate(probs)]
    fold = tmp_path / "fold_0"
    prediction_table.write(str(fold / "validation" / "predictions.csv"), "", SPEC, rows)
    labels = CaseTable(SPEC, {f"case_{i:03d}": {"subtype": "abc"[k], "age": 1.0} for i, k in enumerate(y)})
    cal = calibrate_fold(str(fold), SPEC, labels)
    assert FoldCalibration.load(str(fold)).fits["subtype"] == cal.fits["subtype"]
    assert cal.fits["subtype"].temperature > 1.5
    with pytest.raises(FileNotFoundError, match="validation"):
        calibrate_fold(str(tmp_path / "fold_1"), SPEC, labels)


def test_calibration_block_for_the_evaluation_folder(tmp_path):
    from nnunet_mtl.calibration.evaluation import calibration_block
    probs, y = synthetic(200, n_classes=2, sharpen=3.0, seed=10)
    t = Target("pneumo", "classification", ("no", "yes"))
    block = calibration_block(t, y, probs, str(tmp_path), temperature=3.0, fitted_on_these_cases=True, n_bootstrap=50)
    assert (tmp_path / block["reliability_png"]).is_file() and block["reliability_png"] == "reliability_pneumo.png"
    assert block["calibrated"]["ece"] < block["raw"]["ece"]
    assert "ece_positive_class" in block["raw"]["ci95"] and "optimistic" in block["note"]
    assert "calibrated" not in calibration_block(t, y, probs, None, n_bootstrap=0)


def test_a_raw_threshold_moves_onto_the_calibrated_scale_keeping_every_decision():
    from nnunet_mtl.calibration.temperature import calibrate_threshold
    p = np.linspace(0.01, 0.99, 99)
    probs = np.stack([1 - p, p], 1)
    for temperature in (0.5, 2.0, 3.0):
        thr = calibrate_threshold(0.3, temperature)
        calibrated = apply_temperature(probs, temperature)[:, 1]
        assert ((calibrated >= thr) == (p >= 0.3)).all()
    assert calibrate_threshold(0.5, 3.0) == pytest.approx(0.5)


def test_fold_validation_scored_with_its_fitted_temperature_is_marked_optimistic(tmp_path):
    from nnunet_mtl import prediction_table
    from nnunet_mtl.calibration.evaluation import validation_calibration
    from nnunet_mtl.calibration.store import calibrate_fold
    probs, y = synthetic(80, sharpen=3.0, seed=11)
    rows = [make_row(SPEC, f"case_{i:03d}", {"subtype": p, "age": np.array([1.0])}) for i, p in enumerate(probs)]
    fold = tmp_path / "fold_0"
    csv_path = str(fold / "validation" / "predictions.csv")
    prediction_table.write(csv_path, "", SPEC, rows)
    labels = CaseTable(SPEC, {f"case_{i:03d}": {"subtype": "abc"[k], "age": 1.0} for i, k in enumerate(y)})
    assert validation_calibration(str(fold), csv_path, SPEC, labels, None, n_bootstrap=0) == {}  # not fitted yet
    fit = calibrate_fold(str(fold), SPEC, labels).fits["subtype"]
    assert fit.nll_after < fit.nll_before
    out = tmp_path / "evaluation"
    out.mkdir()
    blocks = validation_calibration(str(fold), csv_path, SPEC, labels, str(out), n_bootstrap=20)
    block = blocks["subtype"]
    assert set(blocks) == {"subtype"} and block["temperature"] == pytest.approx(fit.temperature)
    assert "optimistic" in block["note"] and block["calibrated"]["ece"] < block["raw"]["ece"]
    assert (out / "reliability_subtype.png").is_file()
