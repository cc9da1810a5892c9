"""Issue 13, ``--fold 7`` at training: stock nnU-Net's trainer entry (``get_trainer_from_args``, what
``nnUNetv2_train`` calls) with our trainer refuses a fold beyond splits_final.json instead of training
a random 80:20 split; fold 'all' keeps nnU-Net's behaviour."""
import json
import os

import pytest
import torch
from nnunetv2.run.run_training import get_trainer_from_args


def test_a_fold_beyond_the_split_is_refused(dataset_2d, tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))  # the trainers' log folders stay out of the session's results
    splits_file = os.path.join(dataset_2d.preprocessed_folder, "splits_final.json")

    def trainer(fold):
        return get_trainer_from_args(str(dataset_2d.id), dataset_2d.configuration, fold, "nnUNetTrainerMTL",
                                     dataset_2d.plans, device=torch.device("cpu"))

    train0, val0 = trainer(0).do_split()  # nnU-Net writes its 5-fold split when there is none yet
    with open(splits_file) as f:
        n = len(json.load(f))
    assert n == 5 and set(train0).isdisjoint(val0)
    with pytest.raises(ValueError) as e:
        trainer(n).do_split()
    assert str(e.value) == (f"{splits_file}: fold {n} does not exist; this split has {n} fold(s) (0..{n - 1}); "
                            f"nnU-Net would train a random 80:20 split instead")
    assert trainer(n - 1).do_split()[1]
    train_all, val_all = trainer("all").do_split()
    assert sorted(train_all) == sorted(val_all) == sorted(train0 + val0)
