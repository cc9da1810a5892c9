"""Test helpers: build, plan, preprocess and train tiny synthetic datasets through nnU-Net itself."""
import csv
import json
import os
from dataclasses import dataclass

import torch

from nnunet_mtl.training.knobs import knob_overrides
from nnunet_mtl.planning import plan_and_preprocess
from nnunet_mtl.synthetic import write_synthetic_raw

TINY = {
    "2d": dict(max_features=32, batch_size=4, n_stages=4),
    "3d": dict(max_features=16, batch_size=2, n_stages=3, patch_size=(16, 32, 32)),
}
SHORT = dict(num_iterations_per_epoch=4, num_val_iterations_per_epoch=2, warmup_epochs=1, ramp_epochs=1)


@dataclass
class TinyDataset:
    id: int
    name: str
    configuration: str
    plans: str
    raw_folder: str
    preprocessed_folder: str
    results_root: str

    def model_folder(self, trainer: str) -> str:
        return os.path.join(self.results_root, self.name, f"{trainer}__{self.plans}__{self.configuration}")

    @property
    def dataset_json(self) -> dict:
        with open(os.path.join(self.raw_folder, "dataset.json")) as f:
            return json.load(f)


def prepare_dataset(paths, dataset_id, kind, planner, n, n_test=0, **synthetic_kwargs) -> TinyDataset:
    raw = write_synthetic_raw(paths["nnUNet_raw"], dataset_id, kind, n=n, n_test=n_test, **synthetic_kwargs)
    configuration = "2d" if kind == "2d" else "3d_fullres"
    plans = plan_and_preprocess(dataset_id, planner, (configuration,), shrink=TINY[kind], verify_integrity=False)
    name = os.path.basename(raw)
    return TinyDataset(dataset_id, name, configuration, plans, raw,
                       os.path.join(paths["nnUNet_preprocessed"], name), paths["nnUNet_results"])


def overrides(**knobs):
    """The short test budget plus these knobs, for the block (trainers read them in __init__)."""
    return knob_overrides(**{**SHORT, **knobs})


def train(ds: TinyDataset, trainer: str, fold, continue_training=False, validate=True, **knobs) -> str:
    """Train through nnU-Net's own run_training (the function behind nnUNetv2_train); with
    validate=False the same steps minus the final whole-case validation (saves ~30 s on 2 cores)."""
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint, run_training
    with overrides(**knobs):
        if validate:
            run_training(str(ds.id), ds.configuration, fold, trainer, ds.plans, continue_training=continue_training,
                         device=torch.device("cpu"))
        else:
            t = get_trainer_from_args(str(ds.id), ds.configuration, fold, trainer, ds.plans, continue_training,
                                      device=torch.device("cpu"))
            maybe_load_checkpoint(t, continue_training, False, None)
            t.run_training()
    return ds.model_folder(trainer)


def make_trainer(ds: TinyDataset, trainer: str = "nnUNetTrainerMTL", fold=0, **knobs):
    """An initialised trainer with dataloaders, ready for train_step (no training loop)."""
    from nnunetv2.run.run_training import get_trainer_from_args
    with overrides(**knobs):
        t = get_trainer_from_args(str(ds.id), ds.configuration, fold, trainer, ds.plans, device=torch.device("cpu"))
    t.on_train_start()
    return t


def train_stock(ds: TinyDataset, fold: int = 0) -> str:
    """Stock nnUNetTrainer on ``ds``, one epoch of 3 iterations (attributes set like nnUNetTrainer_Xepochs)."""
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
    folder = ds.model_folder("nnUNetTrainer")
    if not os.path.isfile(os.path.join(folder, f"fold_{fold}", "checkpoint_final.pth")):
        t = get_trainer_from_args(str(ds.id), ds.configuration, fold, "nnUNetTrainer", ds.plans,
                                  device=torch.device("cpu"))
        t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch = 1, 3, 1
        maybe_load_checkpoint(t, False, False, None)
        t.run_training()
    return folder


def write_labels_csv(ds: TinyDataset, path: str) -> str:
    """The dataset's classification labels (the ``mtl`` block of its dataset.json) as a user's labels CSV."""
    cases = ds.dataset_json["mtl"]["cases"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["case_id", "finding"])
        for cid in sorted(cases):
            w.writerow([cid, cases[cid]["finding"]])
    return path
