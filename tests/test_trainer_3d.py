"""3D volumes with nnU-Net's residual-encoder (ResEnc M) plans: train, validate on whole cases, predict."""
import csv
import json
import os

import pytest

from tests.helpers import make_trainer

pytestmark = pytest.mark.timeout(900)


def test_resenc_3d_trains_and_validates_whole_cases(trained_3d, dataset_3d_resenc):
    plans = json.load(open(os.path.join(trained_3d, "plans.json")))
    arch = plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"]
    assert arch.endswith("ResidualEncoderUNet")
    fold = os.path.join(trained_3d, "fold_0")
    summary = json.load(open(os.path.join(fold, "validation", "summary.json")))
    assert "foreground_mean" in summary
    rows = list(csv.DictReader(open(os.path.join(fold, "validation", "predictions.csv"))))
    splits = json.load(open(os.path.join(dataset_3d_resenc.preprocessed_folder, "splits_final.json")))
    assert sorted(r["case_id"] for r in rows) == sorted(splits[0]["val"])
    assert {r["subtype"] for r in rows} <= {"subtype0", "subtype1", "subtype2"}


def test_multiscale_heads_on_3d_resenc(dataset_3d_resenc):
    trainer = make_trainer(dataset_3d_resenc, "nnUNetTrainerMTLMultiScale")
    channels = trainer.network.encoder.output_channels
    head = trainer.network.heads["subtype"]
    stages = sorted({0, 1, 2, len(channels) - 1})
    assert head.read_config["stages"] == stages
    assert head.fc.in_features == sum(channels[s] for s in stages)
    calls = []
    hook = trainer.network.encoder.register_forward_hook(lambda *a: calls.append(1))
    trainer.train_step(next(trainer.dataloader_train))
    hook.remove()
    assert len(calls) == 1


def test_3d_model_predicts_test_volumes(trained_3d, dataset_3d_resenc, tmp_path):
    from nnunet_mtl.inference.folders import predict_folder
    from nnunet_mtl.inference.loader import load_predictor
    predictor = load_predictor(trained_3d, folds=[0], use_mirroring=False, backend="torch")
    rows = list(csv.DictReader(open(predict_folder(predictor, os.path.join(dataset_3d_resenc.raw_folder, "imagesTs"),
                                                   str(tmp_path)))))
    assert len(rows) == 2
    for r in rows:
        probs = [float(r[f"subtype_prob_subtype{k}"]) for k in range(3)]
        assert abs(sum(probs) - 1) < 1e-5
        assert os.path.isfile(tmp_path / f"{r['case_id']}.nii.gz")
