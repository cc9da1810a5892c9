"""Issue 13, the prediction record: one fsynced line per finished case, a line cut short by a kill costs
only that case, and the tables hold only the rows still valid."""
import csv
import json
import os

import numpy as np

from nnunet_mtl.inference.record import CSV_NAME, PROVENANCE_NAME, RECORD_NAME, PredictionRecord
from nnunet_mtl.targets import CLASSIFICATION, REGRESSION, Target, TargetSpec

SPEC = TargetSpec((Target("finding", CLASSIFICATION, classes=("absent", "present")), Target("size", REGRESSION)))


def _out(p):
    return {"finding": np.array([1 - p, p]), "size": np.array([10 * p])}


def _rows(folder):
    with open(os.path.join(folder, CSV_NAME)) as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def test_a_line_cut_short_by_a_kill_costs_only_its_case(tmp_path):
    record = PredictionRecord(str(tmp_path), SPEC)
    record.append("a", _out(0.9), "m1", {"sha256": ["x"]})
    with open(tmp_path / RECORD_NAME, "a") as f:
        f.write('{"case_id": "b", "model": "m1", "outp')  # killed mid-write
    record.append("c", _out(0.2), "m1", {"sha256": ["y"]})
    assert sorted(record.latest()) == ["a", "c"]
    record.publish(lambda cid, e: True, {"model_key": "m1"})
    rows = _rows(tmp_path)
    assert sorted(rows) == ["a", "c"] and rows["a"]["finding"] == "present" and float(rows["c"]["size"]) == 2.0


def test_publish_keeps_only_valid_rows_and_compacts_the_record(tmp_path):
    record = PredictionRecord(str(tmp_path), SPEC)
    record.append("a", _out(0.9), "old", {})
    record.append("a", _out(0.1), "new", {})
    record.append("b", _out(0.8), "old", {})
    record.append("gone", _out(0.8), "new", {})
    record.remove(["gone"])
    record.publish(lambda cid, e: e["model"] == "new", {"model_key": "new"})
    assert list(_rows(tmp_path)) == ["a"] and _rows(tmp_path)["a"]["finding"] == "absent"
    with open(tmp_path / RECORD_NAME) as f:
        assert [json.loads(line)["case_id"] for line in f] == ["a", "b"]  # the latest line per case
    with open(tmp_path / PROVENANCE_NAME) as f:
        assert json.load(f) == {"model_key": "new", "cases": {"a": {}}}
