"""PNG figures for a paper or a clinical review: confusion matrix, ROC curves, DSC distribution.

Figures are bare ``matplotlib.figure.Figure`` objects (no pyplot, no backend switch, no global
state), so plotting works headless and leaves a notebook's inline backend alone; each PNG is
written atomically, so a long evaluation never leaves half a PNG behind.
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import numpy as np
from matplotlib.figure import Figure
from sklearn.metrics import roc_curve

from nnunet_mtl.io_utils import atomic_save_image


def _save(fig: Figure, path: str) -> None:
    fig.tight_layout()
    atomic_save_image(lambda tmp: fig.savefig(tmp, format="png", dpi=120), path)


def plot_confusion(cm: np.ndarray, class_names: Sequence[str], path: str, title: str = "") -> None:
    """Counts in each cell, rows = ground truth, columns = prediction."""
    cm = np.asarray(cm)
    k = len(class_names)
    fig = Figure(figsize=(1.2 * k + 2.5, 1.2 * k + 2))
    ax = fig.subplots()
    ax.imshow(cm, cmap="Blues", vmin=0)
    ax.set_xticks(range(k), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(k), labels=class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("ground truth")
    limit = cm.max() / 2 if cm.size and cm.max() else 0
    for i in range(k):
        for j in range(k):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                    color="white" if cm[i, j] > limit else "black")
    ax.set_title(title or "confusion matrix")
    _save(fig, path)


def plot_roc(y_true: Sequence[int], probs: np.ndarray, class_names: Sequence[str], path: str,
             title: str = "", auc: Optional[float] = None) -> None:
    """Binary: one curve for the positive (last) class; multi-class: one-vs-rest curve per class."""
    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    k = len(class_names)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    for c in ([k - 1] if k == 2 else range(k)):
        positives = y_true == c
        if positives.all() or not positives.any():
            continue  # a curve needs both groups
        fpr, tpr, _ = roc_curve(positives, probs[:, c])
        ax.plot(fpr, tpr, label=f"{class_names[c]}" + (" (positive)" if k == 2 else " vs rest"))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    suffix = f" (AUC {auc:.3f})" if auc is not None and np.isfinite(auc) else ""
    ax.set_title((title or "ROC") + suffix)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="lower right", fontsize="small")
    _save(fig, path)


def plot_distribution(values: Mapping[str, Sequence[float]], path: str, ylabel: str = "DSC",
                      title: str = "", seed: int = 0) -> None:
    """Box plot plus jittered per-case points for each label/region (NaNs left out)."""
    names = list(values)
    data = [np.asarray(values[n], dtype=np.float64) for n in names]
    data = [d[np.isfinite(d)] for d in data]
    fig = Figure(figsize=(max(4.0, 1.3 * len(names) + 2), 4))
    ax = fig.subplots()
    ax.boxplot(data, showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), labels=names)
    rng = np.random.default_rng(seed)
    for i, d in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, d.size), d, s=10, alpha=0.6, color="black")
    ax.set_ylabel(ylabel)
    ax.set_title(title or f"{ylabel} per case")
    _save(fig, path)
