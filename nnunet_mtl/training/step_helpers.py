"""Small pieces the MTL trainer's steps need: device moves, DDP-aware means, class weights."""
from contextlib import contextmanager
from typing import Dict, Sequence

import numpy as np
import torch
from torch import distributed as dist

from nnunet_mtl.training.losses import inverse_frequency_weights
from nnunet_mtl.targets import CaseTable


def to_device(target, device):
    if isinstance(target, list):
        return [t.to(device, non_blocking=True) for t in target]
    return target.to(device, non_blocking=True)


def zero_with_graph(seg_out) -> torch.Tensor:
    """A zero loss attached to every segmentation output (used when the seg weight is 0), so DDP
    sees a gradient (of zero) for every parameter instead of failing on unused ones."""
    outs = seg_out if isinstance(seg_out, (list, tuple)) else [seg_out]
    return sum(o.float().sum() for o in outs) * 0.0


def clip_per_group(optimizer: torch.optim.Optimizer, max_norm: float) -> None:
    """nnU-Net's gradient clipping, one norm per parameter group (``training/optim.build_optimizer``: the U-Net,
    then the heads): the U-Net's clipping (and so its update) never depends on the heads' gradients."""
    for group in optimizer.param_groups:
        torch.nn.utils.clip_grad_norm_(group["params"], max_norm)


class PrivateRandomStream:
    """Random draws inside ``with stream():`` (the heads' dropout) come from this stream's own generator state,
    which moves on from block to block, while the global generators are put back as they were: nnU-Net's
    sampling and augmentation then draw what they would in a stock run, and the dropout masks still change
    from step to step (restoring the global state alone would repeat one mask whenever nothing else draws
    in between, e.g. with augmentation in worker processes or on the GPU)."""

    def __init__(self, device: torch.device, seed: int):
        self.cuda_index = (device.index if device.index is not None else torch.cuda.current_device()) \
            if device.type == "cuda" else None
        seed = int(seed) % (2 ** 63)
        self.cpu_state = torch.Generator().manual_seed(seed).get_state()
        self.cuda_state = None
        if self.cuda_index is not None:
            with torch.random.fork_rng(devices=[self.cuda_index]), torch.cuda.device(self.cuda_index):
                torch.cuda.manual_seed(seed)
                self.cuda_state = torch.cuda.get_rng_state(self.cuda_index)

    @contextmanager
    def __call__(self):
        devices = [] if self.cuda_index is None else [self.cuda_index]
        with torch.random.fork_rng(devices=devices):
            torch.set_rng_state(self.cpu_state)
            if self.cuda_state is not None:
                torch.cuda.set_rng_state(self.cuda_state, self.cuda_index)
            yield
            self.cpu_state = torch.get_rng_state()
            if self.cuda_state is not None:
                self.cuda_state = torch.cuda.get_rng_state(self.cuda_index)


def gather_list(values: list, is_ddp: bool) -> list:
    """Concatenate a per-rank list over all DDP ranks (identity without DDP)."""
    if not is_ddp:
        return list(values)
    parts = [None] * dist.get_world_size()
    dist.all_gather_object(parts, list(values))
    return [v for p in parts for v in p]


def gathered_mean(values: Sequence, is_ddp: bool) -> float:
    """Mean over ranks, ignoring NaN (a target absent from a batch)."""
    vals = np.asarray(gather_list([float(v) for v in values], is_ddp), dtype=np.float64)
    vals = vals[np.isfinite(vals)]
    return float(vals.mean()) if vals.size else float("nan")


def per_target_losses(spec, parts: Dict[str, torch.Tensor]) -> Dict[str, np.ndarray]:
    """Each target's loss this step (NaN when no sample of the batch had a label for it)."""
    return {f"loss_{t.name}": np.asarray(float(parts[t.name]) if t.name in parts else np.nan) for t in spec}


def class_weights_for_split(table: CaseTable, train_keys: Sequence[str], smoothing: float,
                            power: float) -> Dict[str, np.ndarray]:
    """Inverse-frequency weights per classification target, counted on the training split only."""
    return {t.name: inverse_frequency_weights(table.class_counts(t.name, train_keys), smoothing, power)
            for t in table.spec.classification_targets}


def store_regression_stats(network, stats: Dict[str, tuple]) -> None:
    """Write mean/std into the regression heads' buffers (so they travel with each fold's checkpoint)."""
    for name, (mean, std) in stats.items():
        head = network.heads[name]
        head.target_mean.fill_(mean)
        head.target_std.fill_(std)
