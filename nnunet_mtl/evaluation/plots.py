"""PNG figures for a paper or a clinical review: confusion matrix, ROC curves, DSC distribution, conformal
coverage against nominal, estimated (seg_quality) against true Dice.

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


def _ci_error(ci: Optional[Mapping], value: float) -> tuple:
    """(below, above) error bar lengths from a ``{"low", "high"}`` CI; (0, 0) without a finite one."""
    low, high = (ci or {}).get("low"), (ci or {}).get("high")
    if low is None or high is None or not (np.isfinite(low) and np.isfinite(high)) or not np.isfinite(value):
        return 0.0, 0.0
    return max(value - low, 0.0), max(high - value, 0.0)


def plot_coverage(block: Mapping, path: str, title: str = "", class_key=lambda c: f"coverage[{c}]") -> None:
    """Empirical coverage of the conformal sets / intervals (all cases, then each true class when the block has
    them: Mondrian sets promise the coverage per class) with its bootstrap 95 % CI, against the nominal coverage.

    ``block``: ``evaluation.conformal.conformal_block``'s output (``coverage``, ``nominal_coverage``, ``ci95``,
    ``per_class_coverage`` / ``per_class_n`` for classification); ``class_key``: a class's key in ``ci95``."""
    ci = block.get("ci95") or {}
    names, values, errors = [f"all (n={block.get('n', '?')})"], [block["coverage"]], [_ci_error(ci.get("coverage"),
                                                                                                   block["coverage"])]
    for c, v in (block.get("per_class_coverage") or {}).items():
        names.append(f"{c} (n={(block.get('per_class_n') or {}).get(c, '?')})")
        values.append(v if v is not None else np.nan)
        errors.append(_ci_error(ci.get(class_key(c)), values[-1]))
    fig = Figure(figsize=(max(4.0, 1.1 * len(names) + 2), 4))
    ax = fig.subplots()
    x = np.arange(len(names))
    ax.bar(x, np.nan_to_num(np.asarray(values, dtype=float)), color=["#3a7bd5"] + ["#8fb3e8"] * (len(names) - 1))
    ax.errorbar(x, values, yerr=np.asarray(errors).T, fmt="none", ecolor="black", capsize=4, label="95 % CI")
    nominal = block.get("nominal_coverage")
    for i, nom in enumerate(nominal if isinstance(nominal, list) else [nominal]):
        if nom is not None:
            ax.axhline(float(nom), color="red", ls="--", lw=1, label="nominal" if i == 0 else None)
    ax.set_xticks(x, labels=names, rotation=30 if len(names) > 4 else 0, ha="right" if len(names) > 4 else "center")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("empirical coverage")
    ax.set_title(f"{title or 'conformal'}: coverage vs nominal {nominal}")
    ax.legend(loc="lower right", fontsize="small")
    _save(fig, path)


def plot_seg_quality(dice: Sequence[float], quality: Sequence[float], flagged: Sequence[Optional[bool]], path: str,
                     spearman: Optional[float] = None, threshold_range: Optional[Sequence[float]] = None) -> None:
    """One point per case: the true Dice (x) against ``seg_quality``, the Dice the model expects (y); flagged
    cases in red, the band where the flag threshold lies (``threshold_range``), Spearman's rho in the title."""
    d, q = np.asarray(dice, dtype=float), np.asarray(quality, dtype=float)
    flag = np.array([f is not None and bool(f) for f in flagged], dtype=bool)
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8, label="estimated = true")
    ax.scatter(d[~flag], q[~flag], s=18, color="#3a7bd5", label="not flagged")
    if flag.any():
        ax.scatter(d[flag], q[flag], s=24, color="red", marker="x", label="seg_quality_flag = yes")
    if threshold_range is not None:
        lo, hi = (float(v) for v in threshold_range)
        ax.axhspan(lo, hi, color="orange", alpha=0.3, lw=0, label=f"flag threshold ({lo:.3g} to {hi:.3g})")
        ax.axhline((lo + hi) / 2, color="orange", lw=1)
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("true Dice (mean over labels)")
    ax.set_ylabel("seg_quality (estimated Dice)")
    rho = "n/a" if spearman is None or not np.isfinite(spearman) else f"{spearman:.3f}"
    ax.set_title(f"seg_quality vs Dice (n={d.size}, Spearman {rho})")
    ax.legend(loc="lower right", fontsize="small")
    _save(fig, path)
