"""mtl_progress.png: segmentation and head losses, the phase weights and head metrics per epoch.

Drawn on a bare ``matplotlib.figure.Figure`` (no pyplot, no backend switch), written atomically."""
from matplotlib.figure import Figure

from nnunet_mtl.io_utils import atomic_save_image


def plot_history(history, path: str) -> None:
    if not history:
        return
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(8, 10))
    axes = fig.subplots(3, 1, sharex=True)
    for key, style in (("train_seg_loss", "b-"), ("train_head_loss", "r-"), ("val_head_loss", "r--")):
        axes[0].plot(epochs, [h.get(key) for h in history], style, label=key)
    axes[0].set_ylabel("loss")
    axes[0].legend()
    axes[1].plot(epochs, [h.get("seg_weight") for h in history], "b-", label="seg weight")
    axes[1].plot(epochs, [h.get("head_weight") for h in history], "r-", label="head weight")
    axes[1].set_ylabel("loss weight")
    axes[1].legend()
    metric_keys = sorted({k for h in history for k in h if k.startswith("val_") and not k.endswith("loss")})
    for key in metric_keys + ["pseudo_dice_ema", "combined_score"]:
        axes[2].plot(epochs, [h.get(key) for h in history], label=key)
    axes[2].set_xlabel("epoch")
    axes[2].set_ylabel("score (validation patches)")
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    atomic_save_image(lambda tmp: fig.savefig(tmp, format="png", dpi=80), path)
