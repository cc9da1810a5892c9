import pytest

from nnunet_mtl.dataset_spec import DatasetSpec
from nnunet_mtl.targets import Target, TargetSpec, TargetSpecError, read_labels_csv

SPEC = TargetSpec((Target("prognosis", "classification", classes=("good", "poor")),
                   Target("gcs", "regression", weight=0.3), Target("age", "regression", allow_missing=True)))


def write_csv(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_several_targets_parse_and_roundtrip(tmp_path):
    p = write_csv(tmp_path / "l.csv", ["case_id,prognosis,gcs,age", "a,good,14,51", "b,poor,7,"])
    table = read_labels_csv(p, SPEC)
    assert table.value("a", "prognosis") == "good" and table.value("b", "gcs") == 7.0
    assert table.value("b", "age") is None
    table.validate(["a", "b"])
    again = DatasetSpec.from_dataset_json({"mtl": {"targets": SPEC.to_json(), "cases": table.to_json()}}).table
    assert again.values == table.values and again.spec == SPEC


def test_unknown_class_names_the_case(tmp_path):
    p = write_csv(tmp_path / "l.csv", ["case_id,prognosis,gcs,age", "a,good,14,51", "b,terrible,7,3"])
    with pytest.raises(TargetSpecError, match=r"case 'b'.*unknown class 'terrible'"):
        read_labels_csv(p, SPEC)


def test_missing_required_label_names_the_case(tmp_path):
    p = write_csv(tmp_path / "l.csv", ["case_id,prognosis,gcs,age", "a,good,14,51", "b,,7,3"])
    with pytest.raises(TargetSpecError, match=r"case 'b' has no value for target 'prognosis'"):
        read_labels_csv(p, SPEC).validate(["a", "b"])


def test_case_without_row_and_row_without_case(tmp_path):
    p = write_csv(tmp_path / "l.csv", ["case_id,prognosis,gcs,age", "a,good,14,51", "ghost,poor,7,3"])
    table = read_labels_csv(p, SPEC)
    with pytest.raises(TargetSpecError, match=r"case 'ghost' which does not exist"):
        table.validate(["a"])
    with pytest.raises(TargetSpecError, match=r"case 'c' has no label row"):
        table.validate(["a", "ghost", "c"])


def test_spec_inferred_from_csv(tmp_path):
    p = write_csv(tmp_path / "l.csv", ["case_id,subtype,age", "a,1,50.5", "b,0,61.2", "c,2,33.0"])
    spec = read_labels_csv(p).spec
    assert spec["subtype"].classes == ("0", "1", "2") and spec["age"].kind == "regression"


def test_bad_specs_are_rejected():
    with pytest.raises(TargetSpecError):
        Target("x", "classification", classes=("only",))
    with pytest.raises(TargetSpecError):
        TargetSpec.from_json([{"name": "x", "kind": "ordinal"}])
    with pytest.raises(TargetSpecError, match="no 'mtl' block"):
        DatasetSpec.from_dataset_json({"labels": {}})
