"""mtl_progress.png: segmentation and head losses, the phase weights and head metrics per epoch."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_history(history, path: str) -> None:
    if not history:
        return
    epochs = [h["epoch"] for h in history]
    fig, axes = plt.subplots(3, 1, figsize=(8, 10), sharex=True)
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
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    import os
    os.replace(tmp, path)
