"""Bootstrap CIs that can be right (issue 13, item 4): classification CIs resample within each true
class, so a resample never loses the minority class and is never scored as perfect for it."""
import json

import numpy as np
import pytest

from nnunet_mtl.evaluation import metrics as M
from nnunet_mtl.evaluation.evaluate import evaluate
from nnunet_mtl.evaluation.ground_truth import load_labels
from tests.test_evaluation import pred_row, write_csv

N_BOOT = 1000


@pytest.fixture
def all_majority(tmp_path):
    """The issue's case: 20 test cases, 3 positive, a head that predicts 'absent' for all."""
    rng = np.random.default_rng(0)
    cases = [f"t{i:02d}" for i in range(20)]
    truth = {c: "present" if i < 3 else "absent" for i, c in enumerate(cases)}
    write_csv(str(tmp_path / "pred.csv"), [pred_row(c, float(p)) for c, p in zip(cases, rng.uniform(0.05, 0.45, 20))])
    write_csv(str(tmp_path / "labels.csv"), [{"case_id": c, "finding": v} for c, v in truth.items()])
    return tmp_path


def run(d, **kw):
    labels = load_labels(labels_csv=str(d / "labels.csv"), prediction_csv=str(d / "pred.csv"))
    return evaluate(prediction_csv=str(d / "pred.csv"), output_folder=str(d / "out"), labels=labels,
                    make_plots=False, **kw)


def test_all_majority_predictor_gets_sane_cis(all_majority):
    block = run(all_majority, n_bootstrap=N_BOOT)["classification"]["finding"]
    ci = block["ci95"]
    f1_absent = 2 * 17 / (17 + 20)
    assert block["macro_f1"] == pytest.approx(f1_absent / 2)
    # every resample keeps 17 absent + 3 present, all predicted absent: the scores cannot move
    assert ci["macro_f1"]["high"] < 0.6
    assert (ci["macro_f1"]["low"], ci["macro_f1"]["high"]) == pytest.approx((f1_absent / 2, f1_absent / 2))
    assert (ci["balanced_accuracy"]["low"], ci["balanced_accuracy"]["high"]) == (0.5, 0.5)
    assert (ci["sensitivity"]["low"], ci["sensitivity"]["high"]) == (0.0, 0.0)
    for k in ("macro_f1", "balanced_accuracy", "accuracy", "sensitivity", "specificity", "roc_auc"):
        assert ci[k]["n_valid"] == N_BOOT, k
    assert "within each true class" in block["ci95_method"]


def test_plain_resampling_is_what_went_wrong(all_majority):
    """Without strata, resamples that miss the positives score macro-F1 1.0 (the issue's [0.41, 1.00])."""
    y = np.array([1] * 3 + [0] * 17)
    yp = np.zeros(20, dtype=np.int64)
    fn = lambda a, b: M.scores_from_confusion(M.confusion_matrix(a, b, 2))
    plain = M.bootstrap_ci(fn, [y, yp], N_BOOT, seed=0)
    assert plain["macro_f1"]["high"] == 1.0 and plain["balanced_accuracy"]["high"] == 1.0
    stratified = M.bootstrap_ci(fn, [y, yp], N_BOOT, seed=0, strata=y)
    assert stratified["macro_f1"]["high"] < 0.6 and stratified["balanced_accuracy"]["high"] == 0.5


def test_stratified_resamples_keep_each_class_count():
    y = np.array([0, 0, 0, 0, 1, 1, 2])
    counts = M.bootstrap_ci(lambda a: {f"n{k}": float(np.sum(a == k)) for k in range(3)}, [y], 200, seed=1, strata=y)
    assert {k: (v["low"], v["high"]) for k, v in counts.items()} == {"n0": (4, 4), "n1": (2, 2), "n2": (1, 1)}
    # values still vary within a class: the mean of a per-case score is not frozen
    score = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.9, 1.0])
    ci = M.bootstrap_ci(lambda a, s: float(s.mean()), [y, score], 200, seed=1, strata=y)
    assert ci["low"] < score.mean() < ci["high"] and ci["n_valid"] == 200


def test_method_and_valid_resamples_are_in_metrics_json(all_majority):
    run(all_majority, n_bootstrap=50)
    saved = json.loads((all_majority / "out" / "metrics.json").read_text())
    assert "within each true class" in saved["rules"]["ci_classification"]
    assert "n_valid" in saved["rules"]["ci"]
    assert saved["classification"]["finding"]["ci95"]["macro_f1"]["n_valid"] == 50


def test_undefined_resamples_are_counted_and_noted(all_majority):
    """No positive in the ground truth: sensitivity (and AUC) are undefined in every resample."""
    write_csv(str(all_majority / "labels.csv"), [{"case_id": f"t{i:02d}", "finding": "absent"} for i in range(20)])
    res = run(all_majority, n_bootstrap=50)
    ci = res["classification"]["finding"]["ci95"]
    assert ci["sensitivity"] == {"low": None, "high": None, "n_valid": 0}
    assert ci["specificity"]["n_valid"] == 50
    assert any("sensitivity 95% CI from 0 of 50 resamples" in n for n in res["notes"])


def test_degenerate_interval_is_noted_with_the_one_class_resamples(all_majority):
    """Issue 26 item 6: macro-F1 0.459 [0.459, 0.459] came with no word; the note says the head predicts
    one class in every resample (metrics.json ``ci_note``, and a note line of the printed summary)."""
    from nnunet_mtl.evaluation.summary import format_summary
    res = run(all_majority, n_bootstrap=200)
    block = res["classification"]["finding"]
    assert block["ci_note"].startswith("interval degenerate: the model predicts one class in 200 of 200 resamples "
                                       "(zero-width 95% CI of ")
    assert "macro_f1" in block["ci_note"]
    assert json.loads((all_majority / "out" / "metrics.json").read_text())["classification"]["finding"]["ci_note"] \
        == block["ci_note"]
    assert "note: finding: interval degenerate: the model predicts one class in 200 of 200 resamples" \
        in format_summary(res)


def test_one_class_resamples_are_counted_on_the_ci_resamples():
    """One negative case predicted positive: the resamples that leave it out predict one class only."""
    from nnunet_mtl.evaluation.classification import degenerate_ci_note
    y = np.array([1] * 3 + [0] * 17)
    yp = np.zeros(20, dtype=np.int64)
    yp[10] = 1
    flat = {"sensitivity": {"low": 0.0, "high": 0.0, "n_valid": 200}}
    note = degenerate_ci_note(flat, y, yp, 200, seed=0)
    one_class = sum(10 not in idx for idx in M.bootstrap_samples(lambda i: set(i.tolist()), [np.arange(20)], 200, 0,
                                                                strata=y))
    assert 0 < one_class < 200
    assert note == (f"interval degenerate: the model predicts one class in {one_class} of 200 resamples "
                    f"(zero-width 95% CI of sensitivity)")
    assert degenerate_ci_note({"sensitivity": {"low": 0.0, "high": 0.5, "n_valid": 200}}, y, yp, 200, 0) == ""


def test_a_model_with_varying_scores_gets_no_ci_note(all_majority):
    cases = [f"t{i:02d}" for i in range(20)]
    probs = [0.9 if i < 3 else 0.1 for i in range(20)]
    probs[5], probs[1] = 0.8, 0.3  # one false positive, one false negative
    write_csv(str(all_majority / "pred.csv"), [pred_row(c, float(p)) for c, p in zip(cases, probs)])
    block = run(all_majority, n_bootstrap=100)["classification"]["finding"]
    assert "ci_note" not in block
