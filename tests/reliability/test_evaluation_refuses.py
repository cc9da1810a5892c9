"""Evaluation refuses predictions that cannot be right (issue 13, item 4): each bad predictions CSV
ends the CLI with exit 2 and one line naming the file and the case; the review folder written
earlier is left as it was; the same folder with a good CSV then evaluates."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from nnunet_mtl import prediction_table
from nnunet_mtl.cli import evaluate as cli
from nnunet_mtl.evaluation.errors import EvaluationError
from nnunet_mtl.evaluation.evaluate import evaluate
from nnunet_mtl.evaluation.ground_truth import load_labels
from nnunet_mtl.evaluation.prediction_checks import PROB_SUM_TOLERANCE, probability_problem
from nnunet_mtl.targets import CLASSIFICATION, Target
from tests.test_evaluation import pred_row, square, write_csv, write_mask

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CASES = {"c1": 0.9, "c2": 0.3, "c3": 0.6, "c4": 0.2}  # p(present)
TRUTH = {"c1": "present", "c2": "present", "c3": "absent", "c4": "absent"}


@pytest.fixture
def folder(tmp_path):
    for c in CASES:
        write_mask(str(tmp_path / "gt" / f"{c}.nii.gz"), square())
        write_mask(str(tmp_path / "pred" / f"{c}.nii.gz"), square())
    write_good_csv(tmp_path)
    write_csv(str(tmp_path / "labels.csv"), [{"case_id": c, "finding": v} for c, v in TRUTH.items()])
    return tmp_path


def write_good_csv(d):
    write_csv(str(d / "pred.csv"), [pred_row(c, p) for c, p in CASES.items()])


def cli_args(d, out="out"):
    return ["--validation_data", str(d / "gt"), "--prediction_folder", str(d / "pred"), "--prediction_csv",
            str(d / "pred.csv"), "--labels_csv", str(d / "labels.csv"), "--output_folder", str(d / out),
            "--n_bootstrap", "20", "--no_plots"]


def refused_line(d, capsys) -> str:
    """Run the CLI on the folder; it must exit 2 with exactly one line on stderr; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
        cli.run(cli_args(d))
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def rows_with(**changes):
    """The good rows with one case's cells replaced: changes = {case: {column: value}}."""
    rows = [pred_row(c, p) for c, p in CASES.items()]
    for r in rows:
        r.update(changes.get(r["case_id"], {}))
    return rows


PRESENT, ABSENT = prediction_table.prob_column("finding", "present"), prediction_table.prob_column("finding", "absent")
BAD_TABLES = {
    "probabilities sum to 1.8": rows_with(c2={ABSENT: 0.9, PRESENT: 0.9}),
    "probabilities sum to 0.5": rows_with(c2={ABSENT: 0.25, PRESENT: 0.25}),
    "not a finite number": rows_with(c2={PRESENT: "nan"}),
    "negative probability": rows_with(c2={ABSENT: 1.2, PRESENT: -0.2}),
    "is not the most probable": rows_with(c2={"finding": "present"}),  # p(present) = 0.3
    "has two rows": rows_with() + [pred_row("c2", 0.3)],
    "is not a number ('abc')": rows_with(c2={PRESENT: "abc"}),
    "'c2' is in the ground truth": [r for r in rows_with() if r["case_id"] != "c2"],
    "'ghost' is in the predictions": rows_with() + [pred_row("ghost", 0.5)],
}


@pytest.mark.parametrize("expected", list(BAD_TABLES))
def test_bad_predictions_csv_is_refused_in_one_line_and_nothing_written_changes(folder, capsys, expected):
    cli.run(cli_args(folder))  # a good evaluation first
    metrics = (folder / "out" / "metrics.json").read_bytes()
    per_case = (folder / "out" / "per_case.csv").read_bytes()

    write_csv(str(folder / "pred.csv"), BAD_TABLES[expected])
    line = refused_line(folder, capsys)
    assert expected in line
    assert str(folder / "pred.csv") in line
    assert "'c2'" in line or "'ghost'" in line
    assert (folder / "out" / "metrics.json").read_bytes() == metrics
    assert (folder / "out" / "per_case.csv").read_bytes() == per_case

    write_good_csv(folder)
    assert cli.run(cli_args(folder))["classification"]["finding"]["accuracy"] == 0.5


def test_every_bad_row_is_counted_not_only_the_first(folder, capsys):
    write_csv(str(folder / "pred.csv"), rows_with(c2={ABSENT: 0.9, PRESENT: 0.9}, c4={ABSENT: 0.5, PRESENT: 0.9}))
    line = refused_line(folder, capsys)
    assert "'c2'" in line and "(and 1 more)" in line


def test_csv_only_evaluation_refuses_an_empty_table_and_a_case_without_labels(folder):
    labels = load_labels(labels_csv=str(folder / "labels.csv"), prediction_csv=str(folder / "pred.csv"))
    write_csv(str(folder / "pred.csv"), rows_with() + [pred_row("ghost", 0.5)])
    with pytest.raises(EvaluationError, match=r"pred\.csv: case 'ghost' has no ground-truth label row"):
        evaluate(prediction_csv=str(folder / "pred.csv"), labels=labels, n_bootstrap=0)
    (folder / "pred.csv").write_text("case_id,finding,finding_prob_absent,finding_prob_present\n")
    with pytest.raises(EvaluationError, match=r"pred\.csv: no case rows"):
        evaluate(prediction_csv=str(folder / "pred.csv"), labels=labels, n_bootstrap=0)


def test_csv_only_evaluation_notes_labelled_cases_without_a_row(folder):
    """A labels CSV may cover more cases than were predicted; they are not scored, and the result says so."""
    write_csv(str(folder / "pred.csv"), [r for r in rows_with() if r["case_id"] != "c2"])
    labels = load_labels(labels_csv=str(folder / "labels.csv"), prediction_csv=str(folder / "pred.csv"))
    res = evaluate(prediction_csv=str(folder / "pred.csv"), labels=labels, n_bootstrap=0)
    assert res["n_cases"] == 3
    assert any("1 labelled case(s) have no row" in n and "'c2'" in n for n in res["notes"])


def test_probability_checks_tolerance_and_ties():
    t = Target("finding", CLASSIFICATION, classes=("absent", "present"))
    assert probability_problem(t, "present", np.array([0.4, 0.6])) is None
    assert probability_problem(t, "present", np.array([0.4, 0.6 + PROB_SUM_TOLERANCE / 2])) is None
    assert "sum to" in probability_problem(t, "present", np.array([0.4, 0.6 + 2 * PROB_SUM_TOLERANCE]))
    assert probability_problem(t, "absent", np.array([0.5, 0.5])) is None  # a tie: either class is the argmax
    assert probability_problem(t, "present", np.array([0.5, 0.5])) is None
    assert "not a finite" in probability_problem(t, "absent", np.array([math.inf, 0.0]))


# ---------------------------------------------------------------------------------- regression
@pytest.fixture
def regression_folder(tmp_path):
    write_csv(str(tmp_path / "labels.csv"), [{"case_id": "r1", "age": 50}, {"case_id": "r2", "age": 60},
                                             {"case_id": "r3", "age": ""}])
    return tmp_path


def evaluate_regression(d, predicted):
    write_csv(str(d / "pred.csv"), [{"case_id": c, "age": v} for c, v in predicted.items()])
    labels = load_labels(labels_csv=str(d / "labels.csv"), prediction_csv=str(d / "pred.csv"))
    return evaluate(prediction_csv=str(d / "pred.csv"), labels=labels, n_bootstrap=20)


def test_regression_nan_where_the_truth_exists_is_refused_not_dropped(regression_folder):
    """Dropping the case would score the model only on the cases it answered: refused, case named."""
    for bad in ("nan", "", "inf"):
        with pytest.raises(EvaluationError, match=r"pred\.csv: case 'r2': predicted 'age' is .*not a finite number"):
            evaluate_regression(regression_folder, {"r1": 52, "r2": bad, "r3": 40})
    with pytest.raises(EvaluationError, match=r"pred\.csv: case 'r2': age is not a number \('sixty'\)"):
        evaluate_regression(regression_folder, {"r1": 52, "r2": "sixty", "r3": 40})
    res = evaluate_regression(regression_folder, {"r1": 52, "r2": 57, "r3": "nan"})  # r3 has no truth: fine
    assert res["regression"]["age"]["mae"] == pytest.approx(2.5) and res["regression"]["age"]["n"] == 2


# ------------------------------------------------------------------------------ real entry point
def test_evaluation_py_exits_2_with_one_line_on_a_bad_table(folder):
    write_csv(str(folder / "pred.csv"), rows_with(c3={ABSENT: 0.2, PRESENT: 1.6}))
    cmd = [sys.executable, os.path.join(REPO, "evaluation.py")] + cli_args(folder)
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 2, proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "'c3'" in err[0] and "sum to 1.8" in err[0] and "pred.csv" in err[0]
    assert not (folder / "out").exists()


def test_a_spreadsheet_saved_csv_with_a_byte_order_mark_still_evaluates(folder):
    text = (folder / "pred.csv").read_text()
    (folder / "pred.csv").write_text("\ufeff" + text, encoding="utf-8")
    assert cli.run(cli_args(folder))["classification"]["finding"]["accuracy"] == 0.5
