"""Checkpoint selection and early stopping on a combined seg + head score, and its persistence.

The state (best score, epochs since best, per-epoch history) is saved beside each checkpoint
as ``<checkpoint>_mtl.json`` so nnU-Net's continue-training resumes it exactly.
"""
import math
import os
from typing import Optional

from nnunet_mtl.io_utils import atomic_write_json, read_json

EMA_DECAY = 0.9  # as nnU-Net's pseudo-Dice EMA


class EarlyStopping(Exception):
    """Raised at the end of an epoch when the combined score has not improved for `patience` epochs."""


def new_state() -> dict:
    return {"best_score": None, "best_epoch": None, "epochs_since_best": 0, "head_score_ema": None, "history": []}


def update_selection(state: dict, record: dict, seg_weight: float, has_masks: bool) -> float:
    """Fold this epoch's record into the state; return the combined score."""
    head = record.get("head_score", float("nan"))
    prev = state["head_score_ema"]
    ema = head if prev is None or math.isnan(prev) else EMA_DECAY * prev + (1 - EMA_DECAY) * head
    state["head_score_ema"] = ema
    dice = record.get("pseudo_dice_ema", float("nan"))
    if not has_masks or dice is None or math.isnan(dice):
        score = ema
    elif math.isnan(ema):
        score = dice
    else:
        score = seg_weight * dice + (1 - seg_weight) * ema
    record["head_score_ema"] = ema
    record["combined_score"] = score
    if state["best_score"] is None or (not math.isnan(score) and score > state["best_score"]):
        state["best_score"], state["best_epoch"], state["epochs_since_best"] = score, record["epoch"], 0
    else:
        state["epochs_since_best"] += 1
    state["history"].append(dict(record))
    return score


def state_path(checkpoint_file: str) -> str:
    return os.path.splitext(checkpoint_file)[0] + "_mtl.json"


def save_state(checkpoint_file: str, state: dict) -> None:
    atomic_write_json(state_path(checkpoint_file), state)


def load_state(checkpoint_file: str, default: Optional[dict]) -> dict:
    path = state_path(checkpoint_file)
    return read_json(path) if os.path.isfile(path) else default


def write_progress(output_folder: str, state: dict) -> None:
    """mtl_progress.json (all epochs) and mtl_progress.png (losses, weights, head metrics)."""
    atomic_write_json(os.path.join(output_folder, "mtl_progress.json"), state["history"])
    try:
        from nnunet_mtl.progress_plot import plot_history
        plot_history(state["history"], os.path.join(output_folder, "mtl_progress.png"))
    except Exception as e:  # a plot must never stop training
        print(f"nnunet_mtl: could not draw mtl_progress.png ({e})")
