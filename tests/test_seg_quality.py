"""seg_quality from logits: a confident mask scores higher than an uncertain one; the threshold and ranking
measures; tables with and without the check columns read."""
import csv

import numpy as np
import torch

from nnunet_mtl import case_checks, prediction_table
from nnunet_mtl.evaluation.seg_quality import ranking_scores
from nnunet_mtl.inference.seg_quality import fit_threshold, load_threshold, seg_quality, write_fold
from nnunet_mtl.targets import CLASSIFICATION, Target, TargetSpec


def _logits(sharpness, noise, rng, shape=(24, 24)):
    """Background / one square structure, ``sharpness`` the logit margin, ``noise`` its per-voxel jitter."""
    truth = np.zeros(shape)
    truth[6:18, 6:18] = 1
    margin = sharpness * (2 * truth - 1) + noise * rng.normal(size=shape)
    return torch.from_numpy(np.stack([np.zeros(shape), margin])).float()


def test_confident_logits_score_higher_than_uncertain_ones():
    rng = np.random.default_rng(0)
    confident = seg_quality(_logits(8.0, 0.5, rng))
    uncertain = seg_quality(_logits(0.5, 2.0, rng))
    assert confident > 0.95 and uncertain < 0.8 and confident > uncertain


def test_regions_and_an_empty_mask():
    rng = np.random.default_rng(1)
    logits = _logits(6.0, 0.5, rng)[1:]  # one region's logit
    assert seg_quality(logits, has_regions=True) > 0.9
    assert seg_quality(torch.full((3, 8, 8, 8), -20.0).index_fill_(0, torch.tensor([0]), 20.0)) == 1.0


def test_chunks_give_the_same_score_as_one_pass():
    rng = np.random.default_rng(2)
    logits = torch.from_numpy(rng.normal(size=(3, 70, 9, 9))).float()
    p = torch.softmax(logits, 0)
    m = torch.nn.functional.one_hot(p.argmax(0), 3).movedim(-1, 0).float()
    expect = np.mean([float(2 * (p[k] * m[k]).sum() / (p[k].sum() + m[k].sum())) for k in (1, 2)])
    assert abs(seg_quality(logits) - expect) < 1e-5


def test_threshold_file_and_ranking(tmp_path):
    scores = np.linspace(0.2, 1.0, 21)
    fit = fit_threshold(scores)
    assert abs(fit["threshold"] - np.percentile(scores, 10)) < 1e-12
    write_fold(str(tmp_path / "fold_0"), fit)
    assert load_threshold([str(tmp_path / "fold_0"), str(tmp_path / "fold_1")]) == fit["threshold"]
    assert load_threshold([str(tmp_path / "fold_1")]) is None
    r = ranking_scores(scores, scores - 0.1)
    assert r["spearman"] == 1.0 and r["auc_dice_below"] == 1.0 and r["n_dice_below"] > 0
    assert ranking_scores([0.5, 0.6], [0.9, 0.8])["spearman"] is None


SPEC = TargetSpec((Target("finding", CLASSIFICATION, classes=("no", "yes")),))


def _write(tmp_path, outputs_by_case):
    path = str(tmp_path / "predictions.csv")
    rows = [prediction_table.make_row(SPEC, c, o) for c, o in outputs_by_case.items()]
    prediction_table.write(path, "", SPEC, rows)
    return path


def test_tables_with_and_without_the_check_columns_read(tmp_path):
    plain = _write(tmp_path, {"a": {"finding": np.array([0.2, 0.8])}})
    with open(plain) as f:
        assert not set(case_checks.COLUMNS) & set(next(csv.reader(f)))
    assert prediction_table.read(plain, SPEC)["a"]["checks"] == {}
    checked = _write(tmp_path, {"a": {"finding": np.array([0.2, 0.8]), case_checks.RAW_SEG_QUALITY: np.array([0.4]),
                                      case_checks.RAW_FEATURES: np.array([3.2])},
                                "b": {"finding": np.array([0.9, 0.1])}})
    assert prediction_table.read_header_spec(checked) == SPEC
    table = prediction_table.read(checked, SPEC)
    assert table["a"]["checks"] == {"seg_quality": "0.4", "seg_quality_flag": "yes", "ood_score": "3.2",
                                    "ood_flag": "yes"}
    assert table["b"]["checks"] == {}


def test_the_folds_threshold_is_fitted_on_its_validation_rows_and_dice(tmp_path):
    import json
    from nnunet_mtl.inference.seg_quality import FILE_NAME
    from nnunet_mtl.training.seg_quality_fit import fit_fold
    dice = {f"c{i}": d for i, d in enumerate([0.9, 0.85, 0.3, 0.95, 0.2, 0.8])}
    summary = {"metric_per_case": [{"prediction_file": f"/x/{c}.nii.gz", "reference_file": "",
                                    "metrics": {"1": {"Dice": d}, "2": {"Dice": float("nan")}}}
                                   for c, d in dice.items()]}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    rows = [{"case_id": c, "seg_quality": d - 0.05} for c, d in dice.items()]
    fit = fit_fold(str(tmp_path), rows, str(tmp_path / "summary.json"), ".nii.gz")
    assert fit["fitted"] and fit["spearman"] == 1.0 and fit["auc_dice_below"] == 1.0 and fit["n_dice_below"] == 2
    assert json.loads((tmp_path / FILE_NAME).read_text())["threshold"] == fit["threshold"]
    assert not fit_fold(str(tmp_path / "other"), [{"case_id": "a"}], "", ".nii.gz")["fitted"]


def test_evaluation_ranks_the_tables_seg_quality_against_the_cases_dice(tmp_path):
    from nnunet_mtl.evaluation.seg_quality import evaluate_seg_quality
    from nnunet_mtl.evaluation.summary import summary_lines
    per_case = {c: {"case_id": c, "dsc_1": d, "dsc_2": d} for c, d in [("a", 0.9), ("b", 0.2), ("c", 0.7),
                                                                         ("d", 0.4)]}
    path = tmp_path / "predictions.csv"
    path.write_text("case_id,seg_quality\na,0.95\nb,0.3\nc,0.8\nd,0.5\n")
    block = evaluate_seg_quality(str(path), per_case, [1, 2])
    assert block["spearman"] == 1.0 and block["auc_dice_below"] == 1.0 and block["n_dice_below"] == 2
    assert per_case["b"]["seg_quality"] == 0.3 and per_case["b"]["dsc_mean"] == 0.2
    assert any(line.startswith("seg_quality vs Dice (n=4): Spearman 1.000") for line in
               summary_lines({"n_cases": 4, "seg_quality": block}))
    (tmp_path / "old.csv").write_text("case_id,finding\na,yes\n")
    assert evaluate_seg_quality(str(tmp_path / "old.csv"), per_case, [1]) is None


def _squares(n, rng, size=32):
    """Images with one bright square at a random place (noise around it) and its mask."""
    x = rng.normal(0, 0.3, size=(n, 1, size, size)).astype(np.float32)
    y = np.zeros((n, size, size), dtype=np.int64)
    for i in range(n):
        r, c, s = rng.integers(2, size - 14), rng.integers(2, size - 14), rng.integers(8, 13)
        x[i, 0, r:r + s, c:c + s] += 2.0
        y[i, r:r + s, c:c + s] = 1
    return torch.from_numpy(x), torch.from_numpy(y)


def test_a_corrupted_input_is_flagged_by_a_model_that_segments_clean_ones():
    """A small U-Net trained for seconds to segment bright squares; the threshold is fitted on clean validation
    cases, as the trainer does. Clean test images pass; the same images under heavy noise (a corrupted
    acquisition) get seg_quality_flag = yes through the engine's check and the table's columns."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunet_mtl.inference.checks import EngineChecks
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    net = PlainConvUNet(1, 3, [8, 16, 32], torch.nn.Conv2d, 3, [1, 2, 2], 2, 2, 2, conv_bias=True,
                        norm_op=torch.nn.InstanceNorm2d, norm_op_kwargs={"affine": True},
                        nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True})
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    for _ in range(150):
        x, y = _squares(8, rng)
        loss = torch.nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()

    def rows(images):
        with torch.no_grad():
            logits = net(images)
        return [case_checks.columns_of(checks.of_logits(lg, has_regions=False)) for lg in logits]

    checks = EngineChecks()
    validation, _ = _squares(20, rng)
    checks.seg_threshold = fit_threshold([r[case_checks.SEG_QUALITY] for r in rows(validation)])["threshold"]
    test, truth = _squares(10, rng)
    noisy = test + torch.from_numpy(rng.normal(0, 2.0, size=test.shape).astype(np.float32))
    clean, corrupted = rows(test), rows(noisy)

    def dice(images):
        with torch.no_grad():
            return np.mean([2 * ((p == 1) & (t == 1)).sum().item() / ((p == 1).sum() + (t == 1).sum()).item()
                            for p, t in zip(net(images).argmax(1), truth)])
    assert dice(test) > 0.9 and dice(noisy) < dice(test) - 0.1  # clean images segmented, corrupted ones worse
    assert sum(r[case_checks.SEG_QUALITY_FLAG] == "yes" for r in clean) <= 2
    assert all(r[case_checks.SEG_QUALITY_FLAG] == "yes" for r in corrupted)
    assert max(r[case_checks.SEG_QUALITY] for r in corrupted) < min(r[case_checks.SEG_QUALITY] for r in clean)
