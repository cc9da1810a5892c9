"""Evaluation: every metric against scikit-learn or a hand computation, the review folder, the CLI."""
import csv
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image
from scipy.stats import pearsonr
from sklearn import metrics as skm

from nnunet_mtl.evaluation import metrics as M
from nnunet_mtl.evaluation.discovery import find_masks
from nnunet_mtl.evaluation.errors import EvaluationError
from nnunet_mtl.evaluation.evaluate import evaluate
from nnunet_mtl.evaluation.ground_truth import load_labels
from nnunet_mtl.evaluation.segmentation import parse_regions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ("absent", "present")


# ---------------------------------------------------------------------------------- fixtures
def write_mask(path, arr, spacing=None):
    img = sitk.GetImageFromArray(np.asarray(arr, dtype=np.uint8))
    if spacing is not None:
        img.SetSpacing(tuple(float(s) for s in spacing)[::-1])
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sitk.WriteImage(img, path)


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)


def pred_row(case, p_present):
    return {"case_id": case, "finding": CLASSES[int(p_present >= 0.5)],
            "finding_prob_absent": 1 - p_present, "finding_prob_present": p_present}


def square(shape=(3, 10, 10), lo=2, hi=6, label=1):
    a = np.zeros(shape, np.uint8)
    a[:, lo:hi, lo:hi] = label
    return a


@pytest.fixture
def flat_set(tmp_path):
    """4 cases: a perfect one, a shifted one, empty GT + empty prediction, empty GT + false positive."""
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    write_mask(str(gt / "c1.nii.gz"), square())
    write_mask(str(pred / "c1.nii.gz"), square())
    write_mask(str(gt / "c2.nii.gz"), square())
    write_mask(str(pred / "c2.nii.gz"), square(lo=3, hi=7))
    write_mask(str(gt / "c3.nii.gz"), np.zeros((3, 10, 10)))
    write_mask(str(pred / "c3.nii.gz"), np.zeros((3, 10, 10)))
    write_mask(str(gt / "c4.nii.gz"), np.zeros((3, 10, 10)))
    write_mask(str(pred / "c4.nii.gz"), square(lo=0, hi=2))
    write_mask(str(gt / "c1_0000.nii.gz"), np.ones((3, 10, 10)))  # an image beside the masks: skipped
    probs = {"c1": 0.9, "c2": 0.3, "c3": 0.6, "c4": 0.2}
    truth = {"c1": "present", "c2": "present", "c3": "absent", "c4": "absent"}
    write_csv(str(tmp_path / "pred.csv"), [pred_row(c, p) for c, p in probs.items()])
    write_csv(str(tmp_path / "labels.csv"), [{"case_id": c, "finding": v} for c, v in truth.items()])
    return tmp_path


def run_flat(d, **kw):
    labels = load_labels(labels_csv=str(d / "labels.csv"), prediction_csv=str(d / "pred.csv"))
    kw.setdefault("n_bootstrap", 200)
    return evaluate(str(d / "gt"), str(d / "pred"), str(d / "pred.csv"), str(d / "out"), labels=labels, **kw)


def read_per_case(path):
    with open(path, newline="") as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


# ------------------------------------------------------------------------------ segmentation
def test_dice_hand_and_empty_rules():
    a, b = square(), square(lo=3, hi=7)
    assert M.dice(a > 0, a > 0) == 1.0
    assert M.dice(b > 0, a > 0) == pytest.approx(2 * 27 / 96)  # overlap 3x3x3, sizes 48 + 48
    empty = np.zeros_like(a, bool)
    assert M.dice(empty, empty) == 1.0
    assert M.dice(a > 0, empty) == 0.0 and M.dice(empty, a > 0) == 0.0


def test_surface_metrics_hand():
    gt = np.zeros((20, 20), bool)
    gt[5:10, 5:10] = True
    pred = np.roll(gt, 2, axis=1)  # 2 voxels along x, spacing 0.5 -> 1.0 apart
    hd95, nsd = M.surface_metrics(pred, gt, spacing=(1.0, 0.5), tolerance=1.0)
    assert hd95 == pytest.approx(1.0)
    assert nsd == pytest.approx(1.0)
    _, nsd_tight = M.surface_metrics(pred, gt, spacing=(1.0, 0.5), tolerance=0.4)
    assert 0 < nsd_tight < 1
    assert all(math.isnan(v) for v in M.surface_metrics(pred, np.zeros_like(gt), (1, 1)))


# ---------------------------------------------------------------------------- classification
def test_classification_metrics_match_sklearn_with_class_absent_from_predictions():
    rng = np.random.default_rng(1)
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2, 1, 0])
    yp = np.array([0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0])  # class 2 never predicted
    probs = rng.dirichlet(np.ones(3), len(y))
    r = M.classification_metrics(y, yp, probs, ["a", "b", "c"])
    assert r["macro_f1"] == pytest.approx(skm.f1_score(y, yp, average="macro", zero_division=0))
    assert r["accuracy"] == pytest.approx(skm.accuracy_score(y, yp))
    assert r["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, yp))
    assert r["confusion_matrix"] == skm.confusion_matrix(y, yp).tolist()
    p, rec, f1, sup = skm.precision_recall_fscore_support(y, yp, labels=[0, 1, 2], zero_division=0)
    for i, c in enumerate("abc"):
        pc = r["per_class"][c]
        assert (pc["precision"], pc["recall"], pc["f1"], pc["support"]) == pytest.approx((p[i], rec[i], f1[i], sup[i]))
    probs_norm = probs / probs.sum(1, keepdims=True)
    assert r["roc_auc"] == pytest.approx(skm.roc_auc_score(y, probs_norm, multi_class="ovr", average="macro"))
    assert "sensitivity" not in r


def test_binary_sens_spec_auc_positive_is_last_class():
    y = np.array([0, 0, 0, 1, 1, 1, 1, 0])
    p = np.array([0.1, 0.7, 0.3, 0.8, 0.4, 0.9, 0.6, 0.6])  # ties included
    yp = (p >= 0.5).astype(int)
    r = M.classification_metrics(y, yp, np.stack([1 - p, p], 1), CLASSES)
    assert r["positive_class"] == "present"
    assert r["sensitivity"] == pytest.approx(skm.recall_score(y, yp, pos_label=1))
    assert r["specificity"] == pytest.approx(skm.recall_score(y, yp, pos_label=0))
    assert r["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))


def test_auc_nan_with_note_when_class_absent_from_gt():
    y = np.array([0, 0, 1, 1])
    r = M.classification_metrics(y, y, np.full((4, 3), 1 / 3), ["a", "b", "c"])
    assert math.isnan(r["roc_auc"]) and "absent" in r["roc_auc_note"]


def test_regression_metrics_match_sklearn():
    y, yhat = np.array([50.0, 60, 70, 40, 55]), np.array([52.0, 58, 75, 41, 50])
    r = M.regression_metrics(y, yhat)
    assert r["mae"] == pytest.approx(skm.mean_absolute_error(y, yhat))
    assert r["rmse"] == pytest.approx(math.sqrt(skm.mean_squared_error(y, yhat)))
    assert r["pearson_r"] == pytest.approx(pearsonr(y, yhat)[0])


def test_bootstrap_ci_contains_point_and_is_seeded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    yp = np.where(rng.random(60) < 0.8, y, 1 - y)
    fn = lambda a, b: M.scores_from_confusion(M.confusion_matrix(a, b, 2))
    point = fn(y, yp)
    ci = M.bootstrap_ci(fn, [y, yp], n=300, seed=3)
    for k in ("accuracy", "macro_f1", "balanced_accuracy", "sensitivity", "specificity"):
        assert ci[k]["low"] <= point[k] <= ci[k]["high"], k
        assert ci[k]["n_valid"] == 300
    assert ci == M.bootstrap_ci(fn, [y, yp], n=300, seed=3)
    assert M.bootstrap_ci(fn, [y, yp], n=300, seed=4) != ci


def test_tune_threshold_youden_matches_roc_curve_and_f1_by_hand():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 50)
    p = np.clip(y * 0.3 + rng.random(50) * 0.7, 0, 1)
    thr, j = M.tune_threshold(y, p, "youden")
    fpr, tpr, thresholds = skm.roc_curve(y, p)
    assert j == pytest.approx(np.max(tpr - fpr))
    yp = p >= thr
    assert skm.recall_score(y, yp) + skm.recall_score(1 - y, 1 - yp) - 1 == pytest.approx(j)
    thr_f1, f1 = M.tune_threshold([0, 0, 1, 1, 1], [0.1, 0.6, 0.4, 0.8, 0.9], "f1")
    assert (thr_f1, f1) == (0.4, pytest.approx(6 / 7))
    with pytest.raises(ValueError):
        M.tune_threshold([1, 1], [0.2, 0.3])


# ----------------------------------------------------------------------------- whole folders
def test_evaluate_flat_folder_writes_everything(flat_set):
    res = run_flat(flat_set, surface_metrics=True)
    out = flat_set / "out"
    rows = read_per_case(str(out / "per_case.csv"))
    assert sorted(rows) == ["c1", "c2", "c3", "c4"]  # c1_0000 is an image, not a case
    assert float(rows["c1"]["dsc_1"]) == 1.0
    assert float(rows["c2"]["dsc_1"]) == pytest.approx(0.5625)
    assert float(rows["c3"]["dsc_1"]) == 1.0  # both empty -> 1.0
    assert float(rows["c4"]["dsc_1"]) == 0.0  # GT empty, prediction not
    assert rows["c3"]["hd95_1"] == "nan"
    seg = res["segmentation"]["labels"]["1"]
    assert seg["dsc"]["mean"] == pytest.approx((1 + 0.5625 + 1 + 0) / 4)
    assert seg["hd95"]["n"] == 2 and seg["hd95"]["n_nan"] == 2
    assert rows["c2"]["finding_true"] == "present" and rows["c2"]["finding_pred"] == "absent"
    assert rows["c2"]["finding_correct"] == "0" and rows["c1"]["finding_correct"] == "1"

    y, p = np.array([1, 1, 0, 0]), np.array([0.9, 0.3, 0.6, 0.2])
    cls = res["classification"]["finding"]
    assert cls["accuracy"] == pytest.approx(0.5)
    assert cls["roc_auc"] == pytest.approx(skm.roc_auc_score(y, p))
    assert cls["macro_f1"] == pytest.approx(skm.f1_score(y, p >= 0.5, average="macro"))
    for k in ("macro_f1", "accuracy", "balanced_accuracy", "sensitivity", "specificity"):
        ci = cls["ci95"][k]
        assert ci["low"] <= cls[k] <= ci["high"], k

    saved = json.loads((out / "metrics.json").read_text())
    assert saved["classification"]["finding"]["accuracy"] == cls["accuracy"]
    assert "both empty" in saved["rules"]["dice_empty"]
    with open(out / "classification_report.csv") as f:
        report = list(csv.DictReader(f))
    assert [r["class"] for r in report] == ["absent", "present", "macro avg"]
    # calibration of the predicted probabilities: Brier by hand, ECE and its diagram
    probs = np.stack([1 - p, p], 1)
    assert cls["calibration"]["brier"] == pytest.approx(np.mean(np.sum((probs - np.eye(2)[y]) ** 2, 1)))
    assert 0 <= cls["calibration"]["ece"] <= 1 and saved["classification"]["finding"]["calibration"]["n"] == 4
    for name in ("confusion_finding.png", "roc_finding.png", "reliability_finding.png", "dsc_distribution.png"):
        path = out / name
        assert path.stat().st_size > 0
        with Image.open(path) as im:
            im.load()
            assert im.size[0] > 100


def test_threshold_tuning_saves_and_applies(flat_set):
    res = run_flat(flat_set, threshold_tuning="f1")  # F1: 0.67 at 0.9, 0.8 at 0.3, 0.67 at 0.2
    saved = json.loads((flat_set / "out" / "thresholds.json").read_text())
    entry = saved["targets"]["finding"]
    assert entry["threshold"] == pytest.approx(0.3) and entry["positive_class"] == "present"
    assert res["classification"]["finding"]["at_tuned_threshold"]["sensitivity"] == 1.0
    youden = run_flat(flat_set, threshold_tuning="youden")["thresholds"]["finding"]
    assert youden["threshold"] == 0.9 and youden["score"] == 0.5  # J ties at 0.9 and 0.3 -> highest

    thr_file = flat_set / "thr.json"
    thr_file.write_text(json.dumps({"method": "manual", "targets": {"finding": {"threshold": 0.25}}}))
    res2 = run_flat(flat_set, apply_thresholds=str(thr_file))
    rows = read_per_case(str(flat_set / "out" / "per_case.csv"))
    assert {c: r["finding_pred"] for c, r in rows.items()} == {
        "c1": "present", "c2": "present", "c3": "present", "c4": "absent"}
    assert res2["classification"]["finding"]["sensitivity"] == 1.0
    assert "0.25" in res2["classification"]["finding"]["decision"]


def test_pancreas_layout_labels_from_subfolders_and_default_regions(tmp_path):
    gt, pred = tmp_path / "validation", tmp_path / "pred"
    lesion = square(label=1)
    lesion[:, 3:5, 3:5] = 2
    rows = []
    for i, sub in enumerate(["subtype0", "subtype1", "subtype2", "subtype0"]):
        write_mask(str(gt / sub / f"q{i}.nii.gz"), lesion, spacing=(2, 1, 1))
        write_mask(str(gt / sub / f"q{i}_0000.nii.gz"), np.ones_like(lesion), spacing=(2, 1, 1))
        write_mask(str(pred / f"q{i}.nii.gz"), (lesion > 0).astype(np.uint8), spacing=(2, 1, 1))  # lesion missed
        probs = np.eye(3)[[0, 1, 1, 0][i]] * 0.8 + 0.2 / 3
        rows.append({"case_id": f"q{i}", "subtype": f"subtype{int(np.argmax(probs))}",
                     **{f"subtype_prob_subtype{k}": probs[k] for k in range(3)}})
    write_csv(str(tmp_path / "p.csv"), rows)
    labels = load_labels(prediction_csv=str(tmp_path / "p.csv"), gt_dir=str(gt))
    assert labels.value("q2", "subtype") == "subtype2"
    res = evaluate(str(gt), str(pred), str(tmp_path / "p.csv"), str(tmp_path / "out"), labels=labels, n_bootstrap=50)
    assert res["segmentation"]["regions"]["whole"]["dsc"]["mean"] == 1.0
    assert res["segmentation"]["regions"]["lesion"]["dsc"]["mean"] == 0.0
    assert res["classification"]["subtype"]["accuracy"] == 0.75
    assert res["classification"]["subtype"]["per_class"]["subtype2"]["recall"] == 0.0


def test_png_masks_and_regression_target(tmp_path):
    gt, pred = tmp_path / "gt", tmp_path / "pred"
    os.makedirs(gt)
    os.makedirs(pred)
    a = np.zeros((16, 16), np.uint8)
    a[4:8, 4:8] = 1
    Image.fromarray(a).save(gt / "x1.png")
    Image.fromarray(a).save(pred / "x1.png")
    Image.fromarray(a).save(gt / "x2.png")
    Image.fromarray(np.zeros_like(a)).save(pred / "x2.png")
    write_csv(str(tmp_path / "p.csv"), [{"case_id": "x1", "age": 50.0}, {"case_id": "x2", "age": 62.0}])
    write_csv(str(tmp_path / "l.csv"), [{"case_id": "x1", "age": 52.5}, {"case_id": "x2", "age": 60.0}])
    labels = load_labels(labels_csv=str(tmp_path / "l.csv"), prediction_csv=str(tmp_path / "p.csv"))
    res = evaluate(str(gt), str(pred), str(tmp_path / "p.csv"), str(tmp_path / "out"), labels=labels, n_bootstrap=50,
                   regions={})
    assert res["segmentation"]["labels"]["1"]["dsc"]["mean"] == 0.5
    reg = res["regression"]["age"]
    assert reg["mae"] == pytest.approx(2.25) and reg["rmse"] == pytest.approx(math.sqrt((6.25 + 4) / 2))
    assert reg["ci95"]["mae"]["low"] <= reg["mae"] <= reg["ci95"]["mae"]["high"]


def test_parse_regions():
    assert parse_regions("whole=1,2; lesion=2") == {"whole": (1, 2), "lesion": (2,)}
    assert parse_regions("") == {}
    with pytest.raises(EvaluationError):
        parse_regions("whole")


# ------------------------------------------------------------------------------------ errors
def test_error_case_in_csv_but_not_on_disk(flat_set):
    rows = [pred_row(c, 0.5) for c in ("c1", "c2", "c3", "c4", "ghost")]
    write_csv(str(flat_set / "pred.csv"), rows)
    with pytest.raises(EvaluationError, match="'ghost'"):
        run_flat(flat_set)


def test_error_mask_without_prediction(flat_set):
    os.remove(flat_set / "pred" / "c2.nii.gz")
    with pytest.raises(EvaluationError, match="'c2'"):
        run_flat(flat_set)


def test_error_unknown_class_names_case_and_class(flat_set):
    rows = [pred_row(c, 0.5) for c in ("c1", "c2", "c3", "c4")]
    rows[2]["finding"] = "maybe"
    write_csv(str(flat_set / "pred.csv"), rows)
    with pytest.raises(EvaluationError, match=r"'c3'.*'maybe'"):
        run_flat(flat_set)


def test_error_unknown_gt_class_names_case_and_class(flat_set):
    write_csv(str(flat_set / "labels.csv"), [{"case_id": c, "finding": v} for c, v in
                                             [("c1", "present"), ("c2", "weird"), ("c3", "absent"), ("c4", "absent")]])
    with pytest.raises(EvaluationError, match=r"'c2'.*'weird'"):
        run_flat(flat_set)


def test_error_shape_mismatch_names_case_and_shapes(flat_set):
    write_mask(str(flat_set / "pred" / "c2.nii.gz"), np.zeros((3, 10, 12)))
    with pytest.raises(EvaluationError, match=r"'c2'.*\(3, 10, 12\).*\(3, 10, 10\)"):
        run_flat(flat_set)


def test_error_missing_gt_label(flat_set):
    write_csv(str(flat_set / "labels.csv"), [{"case_id": c, "finding": "absent"} for c in ("c1", "c2", "c3")])
    with pytest.raises(EvaluationError, match="'c4'"):
        run_flat(flat_set)


def test_find_masks_rejects_duplicate_case(tmp_path):
    write_mask(str(tmp_path / "a" / "c1.nii.gz"), np.zeros((2, 2)))
    write_mask(str(tmp_path / "b" / "c1.nii.gz"), np.zeros((2, 2)))
    with pytest.raises(EvaluationError, match="'c1'"):
        find_masks(str(tmp_path))


# --------------------------------------------------------------------------------------- CLI
def test_cli_end_to_end_and_error_exit(flat_set):
    out = flat_set / "cli_out"
    cmd = [sys.executable, os.path.join(REPO, "evaluation.py"), "--validation_data", str(flat_set / "gt"),
           "--prediction_folder", str(flat_set / "pred"), "--prediction_csv", str(flat_set / "pred.csv"),
           "--labels_csv", str(flat_set / "labels.csv"), "--output_folder", str(out), "--n_bootstrap", "100",
           "--threshold_tuning", "f1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "finding" in proc.stdout
    for name in ("metrics.json", "per_case.csv", "classification_report.csv", "thresholds.json"):
        assert (out / name).stat().st_size > 0
    os.remove(flat_set / "pred" / "c3.nii.gz")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "'c3'" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1


def test_cli_main_with_dataset_json_regions_label_names_and_target(tmp_path, capsys):
    import shutil

    from nnunet_mtl.cli import evaluate as evaluation
    from nnunet_mtl.synthetic import SUBTYPES, write_synthetic_raw
    folder = write_synthetic_raw(str(tmp_path / "raw"), 7, kind="3d", n=3, shape=(8, 16, 16))
    gt, pred = os.path.join(folder, "labelsTr"), tmp_path / "pred"
    shutil.copytree(gt, pred)
    dj = json.load(open(os.path.join(folder, "dataset.json")))
    rows = []
    for cid, values in dj["mtl"]["cases"].items():
        probs = np.array([0.2, 0.3, 0.5])
        rows.append({"case_id": cid, "subtype": SUBTYPES[2], **{f"subtype_prob_{c}": p for c, p in zip(SUBTYPES, probs)}})
    write_csv(str(tmp_path / "p.csv"), rows)
    res = evaluation.run(["--validation_data", gt, "--prediction_folder", str(pred), "--prediction_csv",
                           str(tmp_path / "p.csv"), "--dataset_json", os.path.join(folder, "dataset.json"),
                           "--output_folder", str(tmp_path / "out"), "--target", "subtype", "--n_bootstrap", "20",
                           "--surface_metrics", "--num_processes", "2", "--no_plots"])
    seg = res["segmentation"]
    assert seg["labels"]["1"]["name"] == "pancreas" and seg["labels"]["2"]["name"] == "lesion"
    assert set(seg["regions"]) == {"whole", "lesion"} and seg["regions"]["whole"]["dsc"]["mean"] == 1.0
    assert seg["labels"]["2"]["hd95"]["mean"] == 0.0
    assert res["classification"]["subtype"]["accuracy"] == pytest.approx(1 / 3)
    assert "DSC pancreas" in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        evaluation.run(["--prediction_csv", str(tmp_path / "p.csv"), "--dataset_json",
                         os.path.join(folder, "dataset.json"), "--output_folder", str(tmp_path / "o2"),
                         "--target", "age"])
    assert e.value.code == 2 and "'age'" in capsys.readouterr().err


def test_find_masks_keeps_case_ids_ending_in_four_digits(tmp_path):
    write_mask(str(tmp_path / "liver_0001.nii.gz"), np.zeros((2, 2)))
    write_mask(str(tmp_path / "liver_0002.nii.gz"), np.zeros((2, 2)))
    write_mask(str(tmp_path / "liver_0002_0000.nii.gz"), np.zeros((2, 2)))
    (tmp_path / "notes.txt").write_text("x")
    paths, groups = find_masks(str(tmp_path))
    assert sorted(paths) == ["liver_0001", "liver_0002"] and groups == {}


def test_classification_only_without_masks(flat_set):
    labels = load_labels(labels_csv=str(flat_set / "labels.csv"), prediction_csv=str(flat_set / "pred.csv"))
    res = evaluate(prediction_csv=str(flat_set / "pred.csv"), output_folder=str(flat_set / "o"), labels=labels,
                   n_bootstrap=0)
    assert "segmentation" not in res and res["n_cases"] == 4 and "ci95" not in res["classification"]["finding"]
    assert (flat_set / "o" / "roc_finding.png").stat().st_size > 0
    write_csv(str(flat_set / "labels.csv"), [{"case_id": c, "finding": "absent"} for c in ("c1", "c2", "c4")])
    labels = load_labels(labels_csv=str(flat_set / "labels.csv"), prediction_csv=str(flat_set / "pred.csv"))
    with pytest.raises(EvaluationError, match="'c3'"):
        evaluate(prediction_csv=str(flat_set / "pred.csv"), labels=labels, n_bootstrap=0)


# --------------------------------------------------------------------------------- structure
def test_plots_leave_pyplot_and_the_backend_alone(tmp_path):
    """The plotting modules use matplotlib's Figure API: importing and plotting never loads pyplot
    (which would pick or switch a global backend under a notebook's feet)."""
    code = ("import sys, numpy as np\n"
            "from nnunet_mtl.evaluation import plots\n"
            "from nnunet_mtl.training import progress_plot\n"
            f"plots.plot_confusion(np.eye(2, dtype=int), ['a', 'b'], {str(tmp_path / 'c.png')!r})\n"
            f"progress_plot.plot_history([{{'epoch': 0, 'train_seg_loss': 1.0}}], {str(tmp_path / 'p.png')!r})\n"
            "assert 'matplotlib.pyplot' not in sys.modules, 'pyplot imported'\n")
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "c.png").stat().st_size > 0 and (tmp_path / "p.png").stat().st_size > 0


def test_prob_column_format_is_spelled_only_in_prediction_table():
    offenders = []
    for folder in ("nnunet_mtl", "split_tools"):
        for dirpath, _, files in os.walk(os.path.join(REPO, folder)):
            for name in files:
                path = os.path.join(dirpath, name)
                if name.endswith(".py") and not path.endswith(os.path.join("nnunet_mtl", "prediction_table.py")):
                    offenders += [f"{path}:{i}" for i, line in enumerate(open(path, encoding="utf-8"), 1)
                                  if "_prob_" in line]
    assert not offenders, offenders


def test_prediction_header_spec_reads_kinds_and_class_order(tmp_path):
    from nnunet_mtl import prediction_table
    spec = prediction_table.spec_from_header(["case_id", "finding", "finding_prob_no", "finding_prob_yes", "age"])
    assert [(t.name, t.kind, t.classes) for t in spec] == [("finding", "classification", ("no", "yes")),
                                                           ("age", "regression", ())]
    write_csv(str(tmp_path / "p.csv"), [{"finding": "no", "finding_prob_no": 1.0, "finding_prob_yes": 0.0}])
    with pytest.raises(EvaluationError, match="case_id"):
        load_labels(labels_csv=str(tmp_path / "p.csv"), prediction_csv=str(tmp_path / "p.csv"))


def test_review_columns_give_coverage_and_seg_quality_plots(flat_set):
    """A table with the conformal and seg_quality columns: coverage_<target>.png (all cases and per true class,
    with CIs) and seg_quality_vs_dice.png; the same table without them: neither."""
    review = {"c1": ("present", "no", 0.95, "no"), "c2": ("absent|present", "yes", 0.40, "yes"),
              "c3": ("absent", "no", 0.90, "no"), "c4": ("present", "no", 0.30, "yes")}
    rows = [dict(pred_row(c, p), finding_set=review[c][0], conformal_coverage="0.9", needs_review=review[c][1],
                 seg_quality=review[c][2], seg_quality_flag=review[c][3])
            for c, p in {"c1": 0.9, "c2": 0.3, "c3": 0.6, "c4": 0.2}.items()]
    write_csv(str(flat_set / "pred.csv"), rows)
    res = run_flat(flat_set, n_bootstrap=50)
    out = flat_set / "out"
    for name in ("coverage_finding.png", "seg_quality_vs_dice.png"):
        with Image.open(out / name) as im:
            im.load()
            assert (out / name).stat().st_size > 0 and im.size[0] > 100
    conf = res["classification"]["finding"]["conformal"]
    assert conf["coverage"] == 0.75 and conf["per_class_coverage"] == {"absent": 0.5, "present": 1.0}
    assert conf["per_class_n"] == {"absent": 2, "present": 2} and "coverage[absent]" in conf["ci95"]
    quality = res["seg_quality"]
    assert quality["n_flagged"] == 2 and quality["flag_threshold_range"] == [0.4, 0.9]
    assert read_per_case(str(out / "per_case.csv"))["c4"]["seg_quality_flag"] == "yes"
    write_csv(str(flat_set / "pred.csv"), [pred_row(c, p) for c, p in {"c1": 0.9, "c2": 0.3, "c3": 0.6,
                                                                        "c4": 0.2}.items()])
    evaluate(str(flat_set / "gt"), str(flat_set / "pred"), str(flat_set / "pred.csv"), str(flat_set / "plain"),
             labels=load_labels(labels_csv=str(flat_set / "labels.csv"), prediction_csv=str(flat_set / "pred.csv")),
             n_bootstrap=0)
    assert (flat_set / "plain" / "roc_finding.png").is_file()
    assert not list((flat_set / "plain").glob("coverage_*.png"))
    assert not (flat_set / "plain" / "seg_quality_vs_dice.png").exists()
