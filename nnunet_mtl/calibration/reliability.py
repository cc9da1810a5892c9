"""The reliability diagram: accuracy against confidence per bin, with the bin counts below.

matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), written atomically.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from nnunet_mtl.calibration.measures import N_BINS, expected_calibration_error, reliability_bins
from nnunet_mtl.io_utils import atomic_save_image


def reliability_diagram(curves: Mapping[str, tuple], path: str, title: str = "", n_bins: int = N_BINS) -> str:
    """Write a PNG with one top-label reliability curve per entry.

    Args:
        curves: label (e.g. ``"raw"``, ``"calibrated"``) -> ``(probs (cases, classes), true indices)``.
        path: the PNG to write.
    Returns:
        ``path``.
    """
    fig = Figure(figsize=(4.6, 5.2))
    ax, ax_n = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    width = 1.0 / n_bins
    offsets = _offsets(len(curves), width)
    for (label, (probs, y)), off in zip(curves.items(), offsets):
        p = np.asarray(probs, dtype=np.float64)
        y = np.asarray(y, dtype=np.int64)
        b = reliability_bins(p.max(axis=1), p.argmax(axis=1) == y, n_bins)
        filled = b["count"] > 0
        ece = expected_calibration_error(p, y, n_bins)
        ax.plot(b["confidence"][filled], b["accuracy"][filled], marker="o", ms=4, label=f"{label} (ECE {ece:.3f})")
        centres = b["edges"][:-1] + width / 2
        ax_n.bar(centres + off, b["count"], width=width / max(1, len(curves)), label=label)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title(title or "reliability (top label)", fontsize=9)
    ax_n.set_xlabel("confidence (highest probability)")
    ax_n.set_ylabel("cases")
    fig.tight_layout()
    FigureCanvasAgg(fig)
    atomic_save_image(lambda tmp: fig.savefig(tmp, format="png", dpi=120), path)
    return path


def _offsets(k: int, width: float) -> Sequence[float]:
    step = width / max(1, k)
    return [(i - (k - 1) / 2) * step for i in range(k)]


__all__ = ["reliability_diagram"]
