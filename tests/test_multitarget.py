"""Several image-level targets (classification + regression, with missing values) and datasets without masks."""
import csv
import json
import os

import numpy as np
import pytest
import torch

from nnunet_mtl.training.case_targets import CaseTargets
from nnunet_mtl.training.losses import HeadLoss
from nnunet_mtl.model.network import MTLNetwork
from nnunet_mtl.synthetic import radiograph_cases
from nnunet_mtl.dataset_spec import DatasetSpec
from tests.helpers import prepare_dataset, train
from tests.test_losses_and_network import tiny_unet


def test_every_head_learns_its_target():
    """Direct training of the MTL network on 3 targets: each target's loss falls."""
    torch.manual_seed(0)
    cases, table = radiograph_cases(24, size=(32, 32), seed=1, extra_targets=True)
    x = torch.from_numpy(np.stack([c.channels[0] for c in cases])[:, None] / 1000.0).float()
    targets = CaseTargets(table).for_keys([c.case_id for c in cases])
    stats = CaseTargets(table).regression_stats(table.case_ids)
    net = MTLNetwork(tiny_unet(ds=False), table.spec, head_dropout=0.0)
    loss_fn = HeadLoss(table.spec)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    history = []
    for _ in range(60):
        _, raw = net(x, with_heads=True)
        total, parts = loss_fn(raw, targets, stats)
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append({k: float(v) for k, v in parts.items()})
    for name in ("finding", "cardiomegaly", "heart_size"):
        first = np.mean([h[name] for h in history[:5]])
        last = np.mean([h[name] for h in history[-5:]])
        assert last < 0.8 * first, f"{name}: loss {first:.3f} -> {last:.3f}"


@pytest.fixture(scope="module")
def maskless(nnunet_paths):
    ds = prepare_dataset(nnunet_paths, 904, "2d", planner="plain", n=12, n_test=3, extra_targets=True,
                         without_masks=True)
    folder = train(ds, "nnUNetTrainerMTL", 0, num_epochs=2)
    return ds, folder


def test_maskless_multitarget_dataset_trains_with_heads_only(maskless):
    ds, folder = maskless
    dj = ds.dataset_json
    assert dj["mtl"]["has_masks"] is False
    history = json.load(open(os.path.join(folder, "fold_0", "mtl_progress.json")))
    assert all(h["seg_weight"] == 0.0 and h["head_weight"] == 1.0 for h in history)
    for name in ("finding", "cardiomegaly", "heart_size"):
        assert np.isfinite(history[0][f"train_loss_{name}"]), name


def test_maskless_dataset_refuses_heads_that_do_not_train_the_encoder(maskless):
    """Without masks only the heads can train the encoder: detaching them would train nothing."""
    from nnunetv2.run.run_training import get_trainer_from_args
    from tests.helpers import overrides
    ds, _ = maskless
    with overrides(heads_train_encoder=False), pytest.raises(ValueError, match="without masks: nothing would train"):
        get_trainer_from_args(str(ds.id), ds.configuration, 0, "nnUNetTrainerMTL", ds.plans, device=torch.device("cpu"))


def test_csv_and_evaluation_carry_every_target(maskless, tmp_path):
    ds, folder = maskless
    val_csv = os.path.join(folder, "fold_0", "validation", "predictions.csv")
    rows = list(csv.DictReader(open(val_csv)))
    assert {"finding", "finding_prob_present", "cardiomegaly", "cardiomegaly_prob_yes", "heart_size"} <= set(rows[0])
    table = DatasetSpec.from_dataset_json(ds.dataset_json).table
    train_sizes = [v for v in (table.value(c, "heart_size") for c in table.case_ids) if v is not None]
    for r in rows:  # regression written in original units, not standardised
        assert min(train_sizes) - 10 < float(r["heart_size"]) < max(train_sizes) + 10
    summary = json.load(open(os.path.join(folder, "fold_0", "validation", "mtl_summary.json")))
    assert summary["heads"] == "trained"
    assert {"finding", "cardiomegaly"} <= set(summary["targets"])
    from nnunet_mtl.evaluation.evaluate import evaluate
    metrics = evaluate(prediction_csv=val_csv, output_folder=str(tmp_path / "eval"), labels=table, n_bootstrap=50)
    text = json.dumps(metrics)
    for name in ("finding", "cardiomegaly", "heart_size"):
        assert f'"{name}"' in text, name
    assert (tmp_path / "eval" / "metrics.json").is_file()


def test_maskless_model_predicts_csv_for_test_cases(maskless, tmp_path):
    ds, folder = maskless
    from nnunet_mtl.inference.folders import predict_folder
    from nnunet_mtl.inference.loader import load_predictor
    predictor = load_predictor(folder, folds=[0], use_mirroring=False, backend="torch")
    assert not predictor.mtl_network.heads_need_segmentation  # no masks: the heads pool globally
    rows = list(csv.DictReader(open(predict_folder(predictor, os.path.join(ds.raw_folder, "imagesTs"),
                                                   str(tmp_path)))))
    assert len(rows) == 3 and all(r["cardiomegaly"] in ("no", "yes") for r in rows)
