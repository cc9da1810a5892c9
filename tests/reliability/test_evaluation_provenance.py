"""Issue 13, evaluation results record what they came from (the predictions' model, the ground truth,
every file read, the settings), so a changed prediction gives a changed provenance; predictions from
more than one model are refused in one line (exit 2)."""
import json
import os

import numpy as np
import pytest

from nnunet_mtl.cli import evaluate as cli
from nnunet_mtl.inference.record import PROVENANCE_NAME, RECORD_NAME, PredictionRecord
from nnunet_mtl.targets import CLASSIFICATION, Target, TargetSpec
from tests.test_evaluation import square, write_csv, write_mask

SPEC = TargetSpec((Target("finding", CLASSIFICATION, classes=("absent", "present")),))
CASES = {"c1": 0.9, "c2": 0.3, "c3": 0.6}  # p(present)
TRUTH = {"c1": "present", "c2": "present", "c3": "absent"}


def predict(folder, model_key, cases=CASES):
    """What predict_folder leaves: masks, the record, predictions.csv and predictions_provenance.json."""
    record = PredictionRecord(str(folder), SPEC)
    for cid, p in cases.items():
        write_mask(str(folder / f"{cid}.nii.gz"), square())
        record.append(cid, {"finding": np.array([1 - p, p])}, model_key, {"sources": [f"/in/{cid}.png"]})
    record.publish(lambda cid, e: e["model"] == model_key, {"model_key": model_key, "model": {"step_size": 0.5}})


@pytest.fixture
def data(tmp_path):
    for c in CASES:
        write_mask(str(tmp_path / "gt" / f"{c}.nii.gz"), square())
    write_csv(str(tmp_path / "labels.csv"), [{"case_id": c, "finding": v} for c, v in TRUTH.items()])
    (tmp_path / "pred").mkdir()
    predict(tmp_path / "pred", "model_a")
    return tmp_path


def evaluate(d, out="out", **kw):
    args = ["--validation_data", str(d / "gt"), "--prediction_folder", str(d / "pred"), "--prediction_csv",
            str(d / "pred" / "predictions.csv"), "--labels_csv", str(d / "labels.csv"), "--output_folder",
            str(d / out), "--n_bootstrap", "0", "--no_plots"]
    return cli.run(args + [a for k, v in kw.items() for a in (f"--{k}", str(v))])


def test_metrics_record_model_ground_truth_files_and_settings(data):
    first = evaluate(data)["provenance"]
    saved = json.load(open(data / "out" / "metrics.json"))["provenance"]
    assert saved == first
    assert first["predictions"]["masks"]["model_key"] == first["predictions"]["csv"]["model_key"] == "model_a"
    assert first["predictions"]["csv"]["model"] == {"step_size": 0.5}
    assert first["ground_truth"]["gt_dir"] == str(data / "gt")
    assert first["ground_truth"]["labels_source"] == str(data / "labels.csv")
    assert sorted(first["files"]["predicted_masks"]) == sorted(CASES)
    assert first["files"]["prediction_csv"]["path"] == str(data / "pred" / "predictions.csv")
    assert first["settings"]["n_bootstrap"] == 0
    assert evaluate(data, "again")["provenance"]["key"] == first["key"]  # same inputs, same key

    other = square().copy()
    other[other > 0] = 0
    write_mask(str(data / "pred" / "c2.nii.gz"), other)  # a changed prediction
    changed = evaluate(data, "changed")["provenance"]
    assert changed["key"] != first["key"]
    assert changed["files"]["predicted_masks"]["c2"]["sha256"] != first["files"]["predicted_masks"]["c2"]["sha256"]
    assert changed["files"]["predicted_masks"]["c1"] == first["files"]["predicted_masks"]["c1"]
    assert evaluate(data, "seed", seed=5)["provenance"]["key"] != changed["key"]  # a setting that changes numbers


def _refused(data, capsys, **kw):
    with pytest.raises(SystemExit) as e:
        evaluate(data, "refused", **kw)
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and not (data / "refused").exists()
    return err


def test_an_unfinished_rerun_with_another_model_is_refused(data, capsys):
    PredictionRecord(str(data / "pred"), SPEC).append("c2", {"finding": np.array([0.5, 0.5])}, "model_b",
                                                      {"sources": ["/in/c2.png"]})
    err = _refused(data, capsys)
    assert f"{data / 'pred'}: case 'c2' was last predicted by model model_b, but {PROVENANCE_NAME} names " \
           f"model model_a" in err


def test_masks_and_table_of_two_models_are_refused(data, capsys):
    (data / "other").mkdir()
    predict(data / "other", "model_b")
    with pytest.raises(SystemExit) as e:
        cli.run(["--validation_data", str(data / "gt"), "--prediction_folder", str(data / "pred"),
                 "--prediction_csv", str(data / "other" / "predictions.csv"), "--labels_csv", str(data / "labels.csv"),
                 "--output_folder", str(data / "refused"), "--n_bootstrap", "0", "--no_plots"])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and "the predictions come from two models: model_a (" in err and "model_b (" in err


def test_rows_the_provenance_does_not_list_are_refused(data, capsys):
    with open(data / "pred" / "predictions.csv") as f:
        lines = f.readlines()
    with open(data / "pred" / "predictions.csv", "a") as f:
        f.write(lines[1].replace("c1,", "c4,", 1))  # a row added by another run
    write_mask(str(data / "gt" / "c4.nii.gz"), square())
    write_mask(str(data / "pred" / "c4.nii.gz"), square())
    write_csv(str(data / "labels.csv"), [{"case_id": c, "finding": v} for c, v in {**TRUTH, "c4": "absent"}.items()])
    err = _refused(data, capsys)
    assert "1 row(s) of predictions.csv (first 'c4') are not from the model" in err


def test_predictions_without_provenance_are_evaluated_with_an_unknown_model(data):
    os.remove(data / "pred" / PROVENANCE_NAME)
    os.remove(data / "pred" / RECORD_NAME)
    block = evaluate(data)["provenance"]
    assert block["predictions"]["masks"]["model_key"] is None and block["key"]
