"""Class imbalance and learning: balanced case sampling, a head that learns an easy task, and a 90/10
dataset trained by the real trainer that does not collapse to the majority class."""
import csv
import json
import os
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import f1_score

from nnunet_mtl.conversion.nnunet_raw import RawCase, write_raw_dataset
from nnunet_mtl.training.case_targets import CaseTargets
from nnunet_mtl.training.losses import HeadLoss
from nnunet_mtl.model.network import MTLNetwork
from nnunet_mtl.training.sampling import ClassBalancedDataLoader, balanced_case_probabilities
from nnunet_mtl.synthetic import FINDING_CLASSES, make_radiograph, radiograph_labels
from nnunet_mtl.targets import CLASSIFICATION, CaseTable, Target, TargetSpec
from nnunet_mtl.training.optim import build_optimizer
from tests.helpers import TINY, TinyDataset, train
from tests.test_losses_and_network import tiny_unet

SPEC = TargetSpec((Target("finding", CLASSIFICATION, classes=FINDING_CLASSES),))


def easy_cases(n: int, size=(32, 32), seed=0, present_every=2, prefix="easy"):
    """Radiograph-like images; 'present' cases carry a bright 14-pixel square somewhere (an easy, seeded task)."""
    rng = np.random.default_rng(seed)
    cases, rows = [], {}
    for i in range(n):
        present = i % present_every == 1
        img, mask, _ = make_radiograph(rng, size, False)
        if present:
            cy, cx = rng.integers(7, size[0] - 7, 2)
            img[cy - 7:cy + 7, cx - 7:cx + 7] += 600.0
        cid = f"{prefix}_{i:03d}"
        cases.append(RawCase(cid, [img], spacing=(0.5, 0.5), mask=mask))
        rows[cid] = {"finding": FINDING_CLASSES[int(present)]}
    return cases, CaseTable.from_mapping(SPEC, rows)


def test_balanced_sampler_draws_classes_equally_from_a_90_10_table():
    rows = {f"c{i:03d}": {"finding": "present" if i < 10 else "absent"} for i in range(100)}
    table = CaseTable.from_mapping(SPEC, rows)
    probs = balanced_case_probabilities(sorted(rows), table, "finding")
    assert sum(probs.values()) == pytest.approx(1.0)
    data = SimpleNamespace(identifiers=sorted(rows))
    labels = SimpleNamespace(all_labels=[0, 1], has_ignore_label=False)
    loader = ClassBalancedDataLoader(data, 8, (16, 16), (16, 16), labels, case_probabilities=probs)
    np.random.seed(0)
    drawn = [k for _ in range(500) for k in loader.get_indices()]
    share = np.mean([rows[k]["finding"] == "present" for k in drawn])
    assert 0.45 < share < 0.55, share


def test_balanced_sampling_variant_uses_unit_class_weights(dataset_2d):
    from tests.helpers import make_trainer
    trainer = make_trainer(dataset_2d, "nnUNetTrainerMTLBalancedSampling", fold=1)
    assert torch.equal(trainer.head_loss.cw_finding, torch.ones(2))
    assert isinstance(trainer.dataloader_train.data_loader, ClassBalancedDataLoader)
    trainer.train_step(next(trainer.dataloader_train))


def test_the_head_learns_an_easy_task_on_whole_held_out_images():
    """Direct training of the MTL network (segmentation + head, as the trainer mixes them) for 120 steps:
    whole-image macro-F1 on held-out cases reaches 0.9."""
    torch.manual_seed(2)
    cases, table = easy_cases(48, seed=3)
    x = torch.from_numpy(np.stack([c.channels[0] for c in cases])[:, None]).float()
    x = (x - x.mean()) / x.std()
    seg = torch.from_numpy(np.stack([c.mask for c in cases])).long()
    y = CaseTargets(table).for_keys([c.case_id for c in cases])["finding"]
    net = MTLNetwork(tiny_unet(ds=False), SPEC, head_dropout=0.0)
    loss_fn = HeadLoss(SPEC)
    optimizer, _ = build_optimizer(net, "adamw", 3e-3, 1e-2, 0.0, 120)
    for _ in range(120):
        seg_out, raw = net(x[:32], with_heads=True)
        loss = 0.5 * torch.nn.functional.cross_entropy(seg_out, seg[:32]) + 0.5 * loss_fn(raw, {"finding": y[:32]})[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    net.eval()
    with torch.no_grad():
        pred = net.outputs_to_predictions(net(x[32:], with_heads=True)[1])["finding"].argmax(1)
    assert f1_score(y[32:].numpy(), pred.numpy(), average="macro") >= 0.9


@pytest.fixture(scope="module")
def imbalanced_2d(nnunet_paths):
    """60 cases, 6 'present' (10 %); a fixed split with 2 of them among the 16 validation cases."""
    from nnunet_mtl.planning import plan_and_preprocess
    cases, table = easy_cases(60, seed=5, present_every=10, prefix="imb")
    raw = write_raw_dataset(nnunet_paths["nnUNet_raw"], 905, "SynthImbalanced", cases, table,
                            radiograph_labels(False), {"0": "rescale_to_0_1"})
    plans = plan_and_preprocess(905, "plain", ("2d",), shrink=TINY["2d"], verify_integrity=False)
    name = os.path.basename(raw)
    ds = TinyDataset(905, name, "2d", plans, raw, os.path.join(nnunet_paths["nnUNet_preprocessed"], name),
                     nnunet_paths["nnUNet_results"])
    present = [c.case_id for c in cases if table.value(c.case_id, "finding") == "present"]
    absent = [c.case_id for c in cases if c.case_id not in present]
    val = present[:2] + absent[:14]
    split = [{"train": sorted(set(table.case_ids) - set(val)), "val": sorted(val)}]
    with open(os.path.join(ds.preprocessed_folder, "splits_final.json"), "w") as f:
        json.dump(split, f)
    return ds


def _validation_rows(ds, trainer):
    # what is under test is the weighting / sampling, not the optimiser: AdamW at these rates learns the
    # easy finding within 200 CPU steps (nnU-Net's SGD default needs more steps than a test can spend);
    # seeded: augmentation and sampling draw from the global generators (nnUNet_n_proc_DA=0: in this process)
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    # heads_train_encoder: the heads whose predictions are the output (pipeline --heads trained) shape the encoder;
    # on detached features (the trainer's default) a bottleneck-pooled head does not read the small finding
    # within 200 steps, where heads fitted on the same features (the pipeline's default output) do
    folder = train(ds, trainer, 0, num_epochs=10, num_iterations_per_epoch=20, num_val_iterations_per_epoch=4,
                   optimizer_name="adamw", initial_lr=3e-3, head_lr=1e-2, heads_train_encoder=True)
    rows = list(csv.DictReader(open(os.path.join(folder, "fold_0", "validation", "predictions.csv"))))
    cases = json.load(open(os.path.join(ds.raw_folder, "dataset.json")))["mtl"]["cases"]
    minority = [float(r["finding_prob_present"]) for r in rows if cases[r["case_id"]]["finding"] == "present"]
    majority = [float(r["finding_prob_present"]) for r in rows if cases[r["case_id"]]["finding"] == "absent"]
    assert len(minority) == 2 and len(majority) == 14
    return np.array(minority), np.array(majority)


def test_imbalanced_dataset_with_class_weights_ranks_the_minority_first(imbalanced_2d):
    """Inverse-frequency weights, 200 steps: every minority case scores above every majority case on whole
    validation images (the head is not stuck on the prior); where 0.5 falls is not asserted, at this budget
    it may still lie on either side (threshold tuning or balanced sampling, below, settle it)."""
    minority, majority = _validation_rows(imbalanced_2d, "nnUNetTrainerMTL")
    assert minority.min() > majority.max(), (minority, majority)


def test_imbalanced_dataset_with_balanced_sampling_does_not_collapse(imbalanced_2d):
    minority, majority = _validation_rows(imbalanced_2d, "nnUNetTrainerMTLBalancedSampling")
    assert (minority > 0.5).any(), f"minority recall is 0: collapsed to the majority {minority, majority}"
    assert (majority < 0.5).any(), f"majority recall is 0: collapsed to the minority {minority, majority}"
