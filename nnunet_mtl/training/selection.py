"""Checkpoint selection and early stopping on a combined seg + head score, and its persistence.

The state (best score, epochs since best, per-epoch history, whether the fold is finished) is saved
beside each checkpoint as ``<checkpoint>_mtl.json`` so nnU-Net's continue-training resumes it
exactly, and a finished fold (budget reached or stopped early) is not trained again.

The model users get is the model that was selected (``final_weights``): after early stopping,
``checkpoint_final.pth`` receives the weights of the best combined score, not those of the
``patience`` epochs that followed it. When the budget runs out first (always, without early stopping:
the default when the heads do not train the encoder), ``checkpoint_final.pth`` keeps nnU-Net's
convention (the last epoch, trained to the end of the learning-rate decay); ``checkpoint_best.pth``
is always there too.
The log and the state (``final_weights_epoch``) say which epoch the final weights come from. A NaN
score is never the best.
"""
import math
import os
from typing import Optional

from nnunet_mtl.io_utils import atomic_write_json, read_json

EMA_DECAY = 0.9  # as nnU-Net's pseudo-Dice EMA


class EarlyStopping(Exception):
    """Raised at the end of an epoch when the combined score has not improved for `patience` epochs."""


def new_state() -> dict:
    return {"best_score": None, "best_epoch": None, "epochs_since_best": 0, "head_score_ema": None, "history": [],
            "finished": False, "stopped_early": False, "final_weights_epoch": None}


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
    finite = score is not None and math.isfinite(score)
    if finite and (state["best_score"] is None or score > state["best_score"]):
        state["best_score"], state["best_epoch"], state["epochs_since_best"] = score, record["epoch"], 0
    else:
        state["epochs_since_best"] += 1
    state["history"].append(dict(record))
    return score


def final_weights(state: dict, last_epoch: int, best_weights: Optional[dict], best_file: Optional[str]):
    """(state dict or None, message): the weights checkpoint_final should hold. None keeps the current
    (last-epoch) weights: no finite score was ever seen, or the last epoch was the best."""
    best = state.get("best_epoch")
    if not state.get("stopped_early"):
        return None, (f"budget reached: final weights are the last epoch's ({last_epoch}; best combined score at "
                      f"epoch {best}, in checkpoint_best.pth)")
    if best is None:
        return None, f"no finite selection score in {last_epoch + 1} epochs: final weights are the last epoch's"
    if best == last_epoch:
        return None, f"final weights: epoch {best}, the last and best (combined score {state['best_score']:.4f})"
    if best_weights is None:
        if best_file is None or not os.path.isfile(best_file):
            return None, f"best epoch {best} has no saved weights: final weights are the last epoch's ({last_epoch})"
        import torch
        best_weights = torch.load(best_file, map_location="cpu", weights_only=False)["network_weights"]
    return best_weights, (f"final weights: the best epoch {best} (combined score {state['best_score']:.4f}), "
                          f"not the last epoch {last_epoch}")


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
        from nnunet_mtl.training.progress_plot import plot_history
        plot_history(state["history"], os.path.join(output_folder, "mtl_progress.png"))
    except Exception as e:  # a plot must never stop training
        print(f"nnunet_mtl: could not draw mtl_progress.png ({e})")
