"""The dataset's mtl block has one home: nnunet_mtl/dataset_spec.py."""
import os
import re

import pytest

from nnunet_mtl import dataset_spec
from nnunet_mtl.dataset_spec import DatasetSpec, targets_from_plans, targets_to_plans
from nnunet_mtl.targets import CaseTable, TargetSpec, TargetSpecError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGETS = [{"name": "finding", "kind": "classification", "classes": ["absent", "present"]}]


def _dataset_json(**block):
    return {"labels": {"background": 0, "left_lung": 1, "right_lung": 2}, "channel_names": {"0": "CR"},
            "mtl": {"targets": TARGETS, "cases": {"a": {"finding": "present"}, "b": {"finding": "absent"}}, **block}}


def test_every_key_round_trips_through_the_typed_spec():
    dj = _dataset_json(has_masks=True, regions={"lungs": [1, 2]}, lateral_pairs=[["left_lung", "right_lung"]],
                       fixed_validation=["b"], patients={"a": "p1", "b": "p2"}, source_layout="generic")
    spec = DatasetSpec.from_dataset_json(dj)
    assert spec.regions == {"lungs": (1, 2)} and spec.lateral_pairs == (("left_lung", "right_lung"),)
    assert spec.fixed_validation == ("b",) and spec.patients == {"a": "p1", "b": "p2"}
    assert spec.label_names == {1: "left_lung", 2: "right_lung"} and spec.table.value("a", "finding") == "present"
    again = DatasetSpec.from_dataset_json(spec.write_into({"labels": dj["labels"], "channel_names": {"0": "CR"}}))
    assert again == spec
    assert set(spec.to_block()) == set(dataset_spec.KEYS)


def test_unknown_key_is_an_error_naming_it():
    with pytest.raises(TargetSpecError, match=r"unknown key 'mtl.lateral_pair'"):
        DatasetSpec.from_dataset_json(_dataset_json(lateral_pair=[["left_lung", "right_lung"]]), source="x.json")
    with pytest.raises(TargetSpecError, match="region 'lungs'"):
        DatasetSpec.from_dataset_json(_dataset_json(regions={"lungs": ["one"]}))


def test_plans_copy_is_written_and_read_by_the_same_module():
    plans = {}
    spec = TargetSpec.from_json(TARGETS)
    targets_to_plans(plans, spec)
    assert targets_from_plans(plans) == spec
    with pytest.raises(TargetSpecError, match="not trained with nnunet_mtl"):
        targets_from_plans({})


def test_build_checks_like_reading():
    table = CaseTable.from_mapping(TargetSpec.from_json(TARGETS), {"a": {"finding": "absent"}})
    assert dataset_spec.build(table, regions={"x": [1]}).regions == {"x": (1,)}
    with pytest.raises(TargetSpecError):
        dataset_spec.build(table, lateral_pairs=[["only_one"]])


# Reading the block as a raw dict anywhere else is what this module exists to prevent.
RAW_READ = re.compile(r"""(\[\s*["'](mtl|mtl_targets|has_masks|fixed_validation|patients|lateral_pairs|source_layout)["']\s*\]"""
                      r"""|\.get\(\s*["'](mtl|mtl_targets|has_masks|regions|fixed_validation|patients|lateral_pairs|source_layout)["'])""")


def test_no_raw_reads_of_the_mtl_block_outside_the_spec_module():
    offenders = []
    for folder in ("nnunet_mtl", "split_tools", "benchmarks"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for name in files:
                path = os.path.join(dirpath, name)
                if not name.endswith(".py") or path.endswith(os.path.join("nnunet_mtl", "dataset_spec.py")):
                    continue
                for i, line in enumerate(open(path, encoding="utf-8"), 1):
                    if RAW_READ.search(line):
                        offenders.append(f"{os.path.relpath(path, ROOT)}:{i}: {line.strip()}")
    for name in ("pipeline.py", "evaluation.py"):
        for i, line in enumerate(open(os.path.join(ROOT, name), encoding="utf-8"), 1):
            if RAW_READ.search(line):
                offenders.append(f"{name}:{i}: {line.strip()}")
    assert not offenders, "raw reads of the mtl block:\n" + "\n".join(offenders)
