"""Case aggregation rules and the per-case collector: pure, no model needed."""
import numpy as np
import pytest
import torch

from nnunet_mtl.inference.case_aggregation import AGGREGATIONS, DEFAULT_AGGREGATION, DEFAULT_FOREGROUND_FLOOR, Aggregation
from nnunet_mtl.inference.case_collector import CaseCollector


def test_aggregation_rules():
    fg = [0.0, 0.9, 0.1]
    outputs = {"t": np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])}
    assert np.allclose(Aggregation("mean").combine(fg, outputs)["t"], [0.5, 0.5])
    assert np.allclose(Aggregation("foreground_weighted").combine(fg, outputs)["t"], [0.05, 0.95])
    assert np.allclose(Aggregation("foreground_weighted").combine([0.0] * 3, outputs)["t"], [0.5, 0.5])
    assert np.allclose(Aggregation("floored", 1.0).combine(fg, outputs)["t"], [0.5, 0.5])
    assert np.allclose(Aggregation("floored", 0.0).combine(fg, outputs)["t"], [0.05, 0.95])
    assert Aggregation("mean").floor == 1.0 and Aggregation("floored", 0.3).floor == 0.3
    with pytest.raises(ValueError, match="aggregation must be one of"):
        Aggregation("last_tile")
    with pytest.raises(ValueError, match="foreground_floor"):
        Aggregation("floored", 1.5)


def _p_pos(rule, floor, fg, p_pos):
    outputs = {"t": np.stack([1 - np.asarray(p_pos), np.asarray(p_pos)], 1)}
    return Aggregation(rule, floor).combine(fg, outputs)["t"][1]


def test_floored_weighting_holds_on_a_negative_case():
    """Nine background tiles at P(pos) 0.1 and one tile with a small false-positive blob
    (foreground 0.05) at P(pos) 0.8: foreground weighting lets the blob decide the case."""
    fg, p = [0.002] * 9 + [0.05], [0.1] * 9 + [0.8]
    mean = _p_pos("mean", 0.5, fg, p)
    assert mean == pytest.approx(0.17)
    assert _p_pos("foreground_weighted", 0.5, fg, p) == pytest.approx(0.61, abs=0.01)
    floored = _p_pos("floored", 0.5, fg, p)
    assert floored == pytest.approx(mean, abs=0.01) and floored < 0.2


def test_floored_weighting_still_favours_foreground_tiles_on_a_positive_case():
    fg, p = [0.002] * 9 + [0.6], [0.3] * 9 + [0.9]
    mean, floored = _p_pos("mean", 0.5, fg, p), _p_pos("floored", 0.5, fg, p)
    assert mean < floored < _p_pos("foreground_weighted", 0.5, fg, p)
    assert floored - mean > 0.02


def test_collector_life_cycle_and_a_retried_fold():
    c = CaseCollector()
    c.begin_case("a", Aggregation("mean"))
    c.begin_fold()
    c.add_tile(torch.tensor(0.0), {"t": torch.tensor([9.0, 9.0])})  # a failed attempt (nnU-Net retries on CPU)
    c.begin_fold()
    for p in (0.2, 0.4):
        c.add_tile(torch.tensor(0.5), {"t": torch.tensor([1 - p, p])})
    c.end_fold()
    c.begin_fold()
    c.add_tile(torch.tensor(0.5), {"t": torch.tensor([0.0, 1.0])})
    c.end_fold()
    heads = c.end_case()
    assert heads.case_id == "a" and len(heads.folds) == 2 and len(heads.folds[0].foreground) == 2
    assert np.allclose(heads.outputs["t"], [(0.7 + 0.0) / 2, (0.3 + 1.0) / 2])
    assert not c.in_case
    with pytest.raises(RuntimeError, match="no case is open"):
        c.begin_fold()
    c.begin_case("b", Aggregation())
    with pytest.raises(RuntimeError, match="still open"):
        c.begin_case("c", Aggregation())
    with pytest.raises(RuntimeError, match="no fold was predicted"):
        c.end_case()
    c.abort_case()
    c.begin_case("c", Aggregation())


def test_every_predicting_cli_offers_the_same_rules():
    from nnunet_mtl.cli import classify, explain, predict
    args = predict.build_parser().parse_args(["-i", "a", "-o", "b", "-m", "c", "--aggregation", "floored",
                                              "--foreground_floor", "0.3"])
    assert (args.aggregation, args.foreground_floor) == ("floored", 0.3)
    args = explain.build_parser().parse_args(["-m", "m", "-i", "x", "-o", "o", "--target", "t"])
    assert (args.aggregation, args.foreground_floor) == (DEFAULT_AGGREGATION, DEFAULT_FOREGROUND_FLOOR)
    for parser in (predict.build_parser(), explain.build_parser()):
        action = next(a for a in parser._actions if a.dest == "aggregation")
        assert tuple(action.choices) == AGGREGATIONS
    with pytest.raises(SystemExit):
        classify.main(["model", "f.png", "--aggregation", "last_tile"])
