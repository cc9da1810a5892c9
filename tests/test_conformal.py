"""Split conformal sets and intervals: coverage over repeated random splits, the fold file, the table columns."""
import csv

import numpy as np
import pytest

from nnunet_mtl import prediction_table
from nnunet_mtl.calibration import conformal
from nnunet_mtl.calibration.conformal_store import EnsembleConformal, conformal_fold, load_fold
from nnunet_mtl.calibration.temperature import softmax
from nnunet_mtl.prediction_table import COVERAGE_COLUMN, REVIEW_COLUMN, make_row
from nnunet_mtl.targets import CaseTable, Target, TargetSpec

SPEC = TargetSpec((Target("subtype", "classification", classes=("a", "b", "c")), Target("volume_ml", "regression")))
SPLITS, N_CAL = 200, 400


def imbalanced(n, seed=0, priors=(0.75, 0.17, 0.08)):
    """Calibrated probabilities of an imbalanced 3-class problem and labels drawn from them."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.2, size=(n, 3)) + np.log(priors)
    q = softmax(logits)
    y = np.array([rng.choice(3, p=row) for row in q])
    return q, y


def split_coverage(probs, y, coverage, class_conditional, seed=0):
    """Per split, covered[i] for the test cases (and their classes), over SPLITS random calibration/test splits."""
    rng = np.random.default_rng(seed)
    covered, classes = [], []
    for _ in range(SPLITS):
        order = rng.permutation(len(y))
        cal, test = order[:N_CAL], order[N_CAL:]
        sets = conformal.prediction_sets(conformal.class_scores(probs[cal], y[cal]), y[cal], probs[test], coverage,
                                         class_conditional=class_conditional)
        covered.append(sets.members[np.arange(len(test)), y[test]])
        classes.append(y[test])
    return np.array(covered), np.array(classes)


def test_marginal_sets_cover_at_the_nominal_rate_over_random_splits():
    probs, y = imbalanced(800, seed=1)
    for coverage in (0.8, 0.9):
        covered, _ = split_coverage(probs, y, coverage, class_conditional=False)
        assert abs(covered.mean() - coverage) < 0.03


def test_class_conditional_sets_cover_every_class_including_the_rare_one():
    probs, y = imbalanced(800, seed=2)
    covered, classes = split_coverage(probs, y, 0.9, class_conditional=True, seed=3)
    for c in range(3):
        assert abs(covered[classes == c].mean() - 0.9) < 0.03, c
    marginal, classes_m = split_coverage(probs, y, 0.9, class_conditional=False, seed=3)
    rare = marginal[classes_m == 2].mean()
    assert rare < covered[classes == 2].mean()  # what class-conditional is for: marginal under-covers rare classes


def test_a_class_with_too_few_calibration_cases_falls_back_to_marginal():
    probs, y = imbalanced(300, seed=4, priors=(0.9, 0.08, 0.02))
    sets = conformal.prediction_sets(conformal.class_scores(probs, y), y, probs[:5], 0.9)
    assert 2 in sets.marginal_classes and 0 not in sets.marginal_classes
    assert conformal.prediction_sets(conformal.class_scores(probs, y), y, probs[:5], 0.9,
                                     class_conditional=False).marginal_classes == ()
    with pytest.raises(ValueError, match="coverage"):
        conformal.prediction_sets(conformal.class_scores(probs, y), y, probs[:5], 90)


def test_regression_intervals_cover_at_the_nominal_rate_and_are_infinite_with_too_few_cases():
    rng = np.random.default_rng(5)
    y_hat = rng.normal(10, 3, 1000)
    y = y_hat + rng.standard_t(4, 1000)
    hits = []
    for _ in range(SPLITS):
        order = rng.permutation(1000)
        cal, test = order[:N_CAL], order[N_CAL:]
        bounds = conformal.intervals(np.abs(y[cal] - y_hat[cal]), y_hat[test], 0.9)
        hits.append(((bounds[:, 0] <= y[test]) & (y[test] <= bounds[:, 1])).mean())
    assert abs(np.mean(hits) - 0.9) < 0.03
    assert np.isinf(conformal.intervals(np.array([1.0, 2.0]), np.array([5.0]), 0.9)).all()


def _fold(tmp_path, name, n, seed):
    probs, y = imbalanced(n, seed=seed)
    ids = [f"{name}_case_{i:03d}" for i in range(n)]
    rows = [make_row(SPEC, cid, {"subtype": p, "volume_ml": np.array([10.0 + i % 3])})
            for i, (cid, p) in enumerate(zip(ids, probs))]
    fold = tmp_path / name
    prediction_table.write(str(fold / "validation" / "predictions.csv"), "", SPEC, rows)
    return str(fold), {cid: {"subtype": "abc"[k], "volume_ml": 11.0} for cid, k in zip(ids, y)}


def test_fold_file_round_trips_and_folds_pool(tmp_path):
    f0, v0 = _fold(tmp_path, "fold_0", 60, 6)
    f1, v1 = _fold(tmp_path, "fold_1", 50, 7)
    labels = CaseTable(SPEC, {**v0, **v1})
    content = conformal_fold(f0, SPEC, labels)
    assert load_fold(f0) == content
    sub = content["targets"]["subtype"]
    assert sub["n_cases"] == 60 and len(sub["scores"]) == 60 and sub["temperature"] == 1.0
    assert sub["classes"]["a"]["class_conditional"] and not sub["classes"]["c"]["class_conditional"]
    assert "marginal" in sub["classes"]["c"]["reason"]
    assert sorted(content["targets"]["volume_ml"]["residuals"])[0] == 0.0
    conformal_fold(f1, SPEC, labels)
    ens = EnsembleConformal.from_fold_dirs([f0, f1, str(tmp_path / "fold_2")], SPEC)
    assert len(ens.scores["subtype"]) == 110 and len(ens.residuals["volume_ml"]) == 110
    assert EnsembleConformal.from_fold_dirs([str(tmp_path / "fold_2")], SPEC) is None


def test_a_row_gets_its_set_interval_and_review_flag():
    rng = np.random.default_rng(8)
    probs, y = imbalanced(400, seed=8)
    ens = EnsembleConformal(scores={"subtype": conformal.class_scores(probs, y)}, labels={"subtype": y},
                            residuals={"volume_ml": np.abs(rng.normal(0, 1, 400))})
    sure = ens.review(SPEC, {"subtype": np.array([0.995, 0.004, 0.001]), "volume_ml": np.array([10.0])}, 0.9)
    assert sure["subtype_set"] == "a" and sure[REVIEW_COLUMN] == "no" and sure[COVERAGE_COLUMN] == "0.9"
    low, high = float(sure["volume_ml_low"]), float(sure["volume_ml_high"])
    assert low < 10.0 < high and high - low == pytest.approx(2 * 1.645, abs=0.4)
    unsure = ens.review(SPEC, {"subtype": np.array([0.4, 0.35, 0.25]), "volume_ml": np.array([10.0])}, 0.9)
    assert len(unsure["subtype_set"].split("|")) > 1 and unsure[REVIEW_COLUMN] == "yes"
    narrow = ens.review(SPEC, {"subtype": np.array([0.995, 0.004, 0.001]), "volume_ml": np.array([10.0])}, 0.9,
                        tolerances={"volume_ml": 1.0})
    assert narrow[REVIEW_COLUMN] == "yes"
    row = make_row(SPEC, "case_x", {"subtype": np.array([0.995, 0.004, 0.001]), "volume_ml": np.array([10.0])},
                   review=sure)
    assert row["subtype_set"] == "a" and row[REVIEW_COLUMN] == "no"


def test_tables_with_and_without_the_conformal_columns_read_back(tmp_path):
    out = {"subtype": np.array([0.6, 0.3, 0.1]), "volume_ml": np.array([10.0])}
    plain = make_row(SPEC, "case_a", out)  # a model without conformal.json: the columns are there, empty
    assert all(plain[c] == "" for c in prediction_table.review_columns(SPEC))
    path = tmp_path / "predictions.csv"
    prediction_table.write(str(path), "", SPEC, [plain])
    assert prediction_table.read_header_spec(str(path)) == SPEC
    assert prediction_table.read(str(path), SPEC)["case_a"]["review"][REVIEW_COLUMN] == ""
    old = tmp_path / "old.csv"  # an older table: no conformal columns at all
    with open(old, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[c for c in prediction_table.columns(SPEC)
                                          if c not in prediction_table.review_columns(SPEC)])
        w.writeheader()
        w.writerow({k: v for k, v in plain.items() if k in w.fieldnames})
    assert prediction_table.read(str(old), SPEC)["case_a"]["review"] == {}
    assert prediction_table.read_header_spec(str(old)) == SPEC


def test_evaluation_scores_coverage_set_size_and_review_sensitivity(tmp_path):
    from nnunet_mtl.evaluation.evaluate import evaluate
    probs, y = imbalanced(800, seed=9)
    rng = np.random.default_rng(9)
    cal, test = np.arange(400), np.arange(400, 800)
    y_hat = rng.normal(10, 3, 800)
    vol = y_hat + rng.normal(0, 1, 800)
    ens = EnsembleConformal(scores={"subtype": conformal.class_scores(probs[cal], y[cal])}, labels={"subtype": y[cal]},
                            residuals={"volume_ml": np.abs(vol[cal] - y_hat[cal])})
    rows, truth = [], {}
    for i in test:
        out = {"subtype": probs[i], "volume_ml": np.array([y_hat[i]])}
        rows.append(make_row(SPEC, f"case_{i:03d}", out, review=ens.review(SPEC, out, 0.9)))
        truth[f"case_{i:03d}"] = {"subtype": "abc"[y[i]], "volume_ml": float(vol[i])}
    path = str(tmp_path / "predictions.csv")
    prediction_table.write(path, "", SPEC, rows)
    result = evaluate(prediction_csv=path, labels=CaseTable(SPEC, truth), n_bootstrap=100, make_plots=False)
    cls = result["classification"]["subtype"]["conformal"]
    assert cls["n"] == 400 and cls["nominal_coverage"] == 0.9 and abs(cls["coverage"] - 0.9) < 0.06
    assert 1.0 < cls["mean_set_size"] < 3.0 and cls["ci95"]["coverage"]["low"] < cls["coverage"]
    assert cls["review_sensitivity_for_errors"] > 0.5  # most wrong argmax answers come with a set of several classes
    reg = result["regression"]["volume_ml"]["conformal"]
    assert abs(reg["coverage"] - 0.9) < 0.06 and reg["median_width"] == pytest.approx(2 * 1.645, abs=0.5)
    prediction_table.write(path, "", SPEC, [make_row(SPEC, r["case_id"], {"subtype": probs[0], "volume_ml":
                                                                          np.array([1.0])}) for r in rows])
    result = evaluate(prediction_csv=path, labels=CaseTable(SPEC, truth), n_bootstrap=0, make_plots=False)
    assert "conformal" not in result["classification"]["subtype"]  # a model without conformal.json: no block


def test_a_merge_keeps_the_review_columns_of_rows_already_there(tmp_path):
    from nnunet_mtl.inference.record import merge_into_folder
    out = {"subtype": np.array([0.6, 0.3, 0.1]), "volume_ml": np.array([10.0])}
    review = {"subtype_set": "a|b", "volume_ml_low": "8", "volume_ml_high": "12", COVERAGE_COLUMN: "0.9",
              REVIEW_COLUMN: "yes"}
    merge_into_folder(str(tmp_path), SPEC, {"a": out}, True, {"a": review})
    path = merge_into_folder(str(tmp_path), SPEC, {"b": out}, True)
    table = prediction_table.read(path, SPEC)
    assert table["a"]["review"] == review and table["b"]["review"][REVIEW_COLUMN] == ""
