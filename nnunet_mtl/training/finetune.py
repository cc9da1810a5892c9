"""Joint fine-tuning from a stock nnU-Net model: its encoder/decoder weights, fresh heads.

nnU-Net's ``-pretrained_weights`` (``nnunetv2/run/load_pretrained_weights.py``) asserts that every key
of the network is in the file, and stock checkpoints have no ``heads.*`` keys, so it refuses our
network; there is no trainer hook between it and the network. Our trainers therefore take the
``init_from`` knob instead (``NNUNET_MTL_OVERRIDES='{"init_from": ...}'`` with stock
``nnUNetv2_train``, or ``--init_from`` in the pipeline) and call ``load_stock_weights`` once the
network exists and before the first epoch, never when a run is continued.

``init_from`` is a checkpoint file (``.pth``), a fold folder holding ``checkpoint_final.pth``, or a
model folder: then ``fold_<this fold>/checkpoint_final.pth`` (fold k starts from the stock fold k,
which was trained on the same training split, so validation stays out-of-fold).

``heads_only_epochs``: for the first N epochs every non-head parameter is frozen (no gradient, so
no optimiser update, weight decay included) and its normalisation layers keep their running
statistics; the heads learn to read the stock encoder before the whole network moves.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Union

import torch
from torch import nn

HEAD_PREFIX = "heads."
STOCK_CHECKPOINT = "checkpoint_final.pth"


class IncompatibleWeights(ValueError):
    """The stock checkpoint does not fit this network (a shape differs or a U-Net key is missing)."""


@dataclass
class LoadReport:
    source: str
    loaded: List[str] = field(default_factory=list)
    new: List[str] = field(default_factory=list)      # keys of our network the file lacks (the heads)
    unused: List[str] = field(default_factory=list)   # keys of the file our network lacks

    def lines(self) -> List[str]:
        return [f"Initialised from {self.source}: {len(self.loaded)} encoder/decoder tensors loaded",
                f"New (not in the stock checkpoint, start fresh): {', '.join(self.new) or 'none'}",
                f"Unused stock keys: {', '.join(self.unused) or 'none'}"]


def resolve_checkpoint(init_from: str, fold: Union[int, str]) -> str:
    """The checkpoint file ``init_from`` names for this fold (see the module docstring)."""
    path = os.path.abspath(os.path.expanduser(init_from))
    candidates = [path] if os.path.isfile(path) else [os.path.join(path, STOCK_CHECKPOINT),
                                                       os.path.join(path, f"fold_{fold}", STOCK_CHECKPOINT)]
    for c in candidates:
        if os.path.isfile(c):
            return c
    raise FileNotFoundError(f"init_from {init_from!r}: no checkpoint (looked for {', '.join(candidates)})")


def load_stock_weights(network: nn.Module, checkpoint_file: str) -> LoadReport:
    """Copy the stock encoder/decoder tensors into ``network`` (in place); heads stay as built.

    Every non-head key of the network must be in the file with the same shape, else one
    ``IncompatibleWeights`` naming the key (and both shapes)."""
    saved = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    stock = saved["network_weights"] if isinstance(saved, dict) and "network_weights" in saved else saved
    stock = {k[len("module."):] if k.startswith("module.") else k: v for k, v in stock.items()}
    stock = {k.replace("_orig_mod.", ""): v for k, v in stock.items()}
    own = network.state_dict()
    report = LoadReport(checkpoint_file)
    for key, tensor in own.items():
        if key not in stock:
            if key.startswith(HEAD_PREFIX):
                report.new.append(key)
                continue
            raise IncompatibleWeights(f"{checkpoint_file}: key {key} of the network is missing from the stock "
                                      f"checkpoint (a different architecture or plans?)")
        if tuple(stock[key].shape) != tuple(tensor.shape):
            raise IncompatibleWeights(f"{checkpoint_file}: key {key} has shape {tuple(stock[key].shape)} in the stock "
                                      f"checkpoint and {tuple(tensor.shape)} in this network")
        report.loaded.append(key)
    report.unused = sorted(k for k in stock if k not in own)
    network.load_state_dict({**own, **{k: stock[k] for k in report.loaded}})
    return report


def set_heads_only(network: nn.Module, heads_only: bool, optimizer=None, distributed: bool = False) -> bool:
    """Freeze (True) or unfreeze (False) every non-head parameter; returns whether anything changed.

    Single process: ``requires_grad`` off, so no backward runs through the U-Net and the optimiser
    skips its parameters (no gradient: no update, no weight decay). Under DDP, which expects a gradient
    for every parameter it was built with, the gradients are kept and dropped by an optimiser pre-step
    hook instead. Either way the frozen parts go to eval mode where they track running statistics
    (BatchNorm), so nothing outside the heads changes; call after ``network.train()``."""
    frozen = [p for name, p in network.named_parameters() if not name.startswith(HEAD_PREFIX)]
    if distributed:
        handle = getattr(optimizer, "_mtl_heads_only_hook", None)
        changed = (handle is not None) != heads_only
        if heads_only and handle is None:
            ids = {id(p) for p in frozen}

            def drop_unet_grads(opt, _args, _kwargs):
                for group in opt.param_groups:
                    for p in group["params"]:
                        if id(p) in ids:
                            p.grad = None
            optimizer._mtl_heads_only_hook = optimizer.register_step_pre_hook(drop_unet_grads)
        elif not heads_only and handle is not None:
            handle.remove()
            optimizer._mtl_heads_only_hook = None
    else:
        changed = any(p.requires_grad == heads_only for p in frozen)
        for p in frozen:
            p.requires_grad_(not heads_only)
    if heads_only:
        for name, m in network.named_modules():
            if not name.startswith(HEAD_PREFIX.rstrip(".")) and getattr(m, "track_running_stats", False):
                m.eval()
    return changed
