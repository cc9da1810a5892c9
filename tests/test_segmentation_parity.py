"""The default multi-task trainer trains the U-Net exactly as stock nnU-Net: same seed, same U-Net weights.

This is what makes "the heads cost no segmentation accuracy" hold at any budget (docs/benchmarks.md):
the heads learn on the encoder's features detached, the segmentation loss keeps its full weight, the
U-Net's gradients are clipped apart from the heads', and the heads' dropout draws leave the random
stream that nnU-Net's sampling and augmentation use untouched."""
import random

import numpy as np
import pytest
import torch

from nnunet_mtl.training.knobs import knob_overrides, parse_bool
from nnunet_mtl.model.network import unwrap

BUDGET = dict(num_epochs=2, num_iterations_per_epoch=3, num_val_iterations_per_epoch=1)


def _train_from_seed(ds, trainer_name, **knobs):
    """Fold 4 (no other test trains it with these trainers) with nnU-Net's own loop, seeded as a user would seed a run."""
    from nnunetv2.run.run_training import get_trainer_from_args
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)
    with knob_overrides(**BUDGET, **knobs):
        trainer = get_trainer_from_args(str(ds.id), ds.configuration, 4, trainer_name, ds.plans,
                                        device=torch.device("cpu"))
        for name, value in BUDGET.items():  # as nnUNetTrainer_Xepochs does, for stock and ours alike
            setattr(trainer, name, value)
        trainer.run_training()
    return trainer, {k: v.clone() for k, v in unwrap(trainer.network).state_dict().items()
                     if not k.startswith("heads.")}


def test_default_trainer_gives_the_stock_unet_and_the_joint_gradient_does_not(dataset_2d):
    _, stock = _train_from_seed(dataset_2d, "nnUNetTrainer")
    mtl, default = _train_from_seed(dataset_2d, "nnUNetTrainerMTL")
    _, joint = _train_from_seed(dataset_2d, "nnUNetTrainerMTL", heads_train_encoder=True)

    assert default.keys() == stock.keys()
    assert all(torch.equal(default[k], stock[k]) for k in stock), \
        [k for k in stock if not torch.equal(default[k], stock[k])][:5]
    assert not all(torch.equal(joint[k], stock[k]) for k in stock)  # the comparison can tell them apart
    # the heads did train, on the features of that same U-Net
    assert mtl.loss_weights()[0] == 1.0 and mtl.loss_weights()[1] > 0
    assert unwrap(mtl.network).detach_head_inputs


def test_heads_dropout_changes_every_step_and_leaves_the_global_stream_alone():
    """Nothing draws between two steps (augmentation in worker processes, or on the GPU): the heads' dropout
    must still change its mask, and the global generator must stay where a stock run would have it."""
    from nnunet_mtl.training.step_helpers import PrivateRandomStream
    stream = PrivateRandomStream(torch.device("cpu"), seed=5)
    dropout = torch.nn.Dropout(0.5)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    masks = []
    for _ in range(3):
        with stream():
            masks.append(dropout(torch.ones(64)) > 0)
    assert torch.equal(torch.get_rng_state(), before)
    assert not torch.equal(masks[0], masks[1]) and not torch.equal(masks[1], masks[2])


def test_heads_train_encoder_is_a_boolean_knob():
    assert parse_bool("true") is True and parse_bool("no") is False and parse_bool(False) is False
    with pytest.raises(ValueError, match="not a boolean"):
        parse_bool("maybe")
