"""Optimiser for the MTL trainer: two parameter groups (U-Net, heads) with their own learning rates.

``sgd`` (the default) is nnU-Net's own (nesterov, momentum 0.99, lr 1e-2; heads 1e-3); ``adamw`` is
the seed design (AdamW, lr 1e-4 for everything), which the accuracy benchmark found costing most of
the Dice at an equal budget (docs/benchmarks.md). Both decay with nnU-Net's polynomial schedule, each group from its own lr.
"""
from typing import Tuple

import torch
from nnunetv2.training.lr_scheduler.polylr import PolyLRScheduler

SGD_MOMENTUM = 0.99  # nnU-Net's


class GroupPolyLRScheduler(PolyLRScheduler):
    """nnU-Net's PolyLR, except that every parameter group decays from its own initial lr."""

    def step(self, current_step=None):
        if current_step is None or current_step == -1:
            current_step = self.ctr
            self.ctr += 1
        factor = (1 - current_step / self.max_steps) ** self.exponent
        for group in self.optimizer.param_groups:
            group['lr'] = group['initial_lr'] * factor
        self._last_lr = [group['lr'] for group in self.optimizer.param_groups]


def build_optimizer(network, name: str, lr: float, head_lr: float, weight_decay: float,
                    num_epochs: int) -> Tuple[torch.optim.Optimizer, GroupPolyLRScheduler]:
    """Group 0: everything but the heads (nnU-Net logs its lr); group 1: ``network.heads``."""
    head_ids = {id(p) for p in network.heads.parameters()}
    groups = [{"params": [p for p in network.parameters() if id(p) not in head_ids], "lr": lr, "initial_lr": lr},
              {"params": list(network.heads.parameters()), "lr": head_lr, "initial_lr": head_lr}]
    if name == "adamw":
        optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    elif name == "sgd":
        optimizer = torch.optim.SGD(groups, lr=lr, weight_decay=weight_decay, momentum=SGD_MOMENTUM, nesterov=True)
    else:
        raise ValueError(f"unknown optimizer {name!r} (use 'adamw' or 'sgd')")
    return optimizer, GroupPolyLRScheduler(optimizer, lr, num_epochs)
