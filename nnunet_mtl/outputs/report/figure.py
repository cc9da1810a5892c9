"""The case PNG: the image on its most informative slice with the mask outline, the Grad-CAM overlay
when one was made, and the predictions as text, so the PNG alone tells the case.

matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), written atomically.
"""
from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image

from nnunet_mtl.io_utils import atomic_save_image

OUTLINE_COLORS = ("lime", "magenta", "cyan", "yellow", "orange", "white")  # label 1, 2, ... (cycled)


def as_volume(array: np.ndarray, what: str) -> np.ndarray:
    """(y, x) -> (1, y, x); (z, y, x) kept; a leading channel axis of 1 dropped."""
    arr = np.asarray(array)
    while arr.ndim > 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ValueError(f"{what}: expected (y, x) or (z, y, x), got shape {np.shape(array)}")
    return arr


def representative_slice(mask: Optional[np.ndarray], n_slices: int) -> int:
    """The axial slice (axis 0) with the most predicted foreground; the middle one when there is none."""
    if mask is not None:
        counts = (mask.reshape(mask.shape[0], -1) > 0).sum(1)
        if counts.any():
            return int(np.argmax(counts))
    return n_slices // 2


def window(image: np.ndarray) -> Tuple[float, float]:
    """Grey window from the 1st/99th percentile of the whole image (volume in 3D)."""
    lo, hi = np.percentile(image, [1, 99])
    return float(lo), float(hi if hi > lo else lo + 1)


def _outline(ax, mask2d: np.ndarray, label_names: Mapping[int, str]) -> List[Line2D]:
    handles = []
    for label in [int(v) for v in np.unique(mask2d) if v > 0]:
        inside = (mask2d == label).astype(float)
        color = OUTLINE_COLORS[(label - 1) % len(OUTLINE_COLORS)]
        if not inside.all():
            ax.contour(np.pad(inside, 1), levels=[0.5], colors=color, linewidths=1.2,
                       extent=(-1.5, inside.shape[1] + 0.5, inside.shape[0] + 0.5, -1.5))
        handles.append(Line2D([], [], color=color, label=label_names.get(label, f"label {label}")))
    return handles


def _prepare(image, mask, spacing):
    vol = as_volume(image, "image").astype(np.float32)
    m = None if mask is None else as_volume(mask, "mask")
    if m is not None and m.shape != vol.shape:
        raise ValueError(f"mask shape {m.shape} differs from the image's {vol.shape}")
    aspect = 1.0 if not spacing or len(spacing) < 2 else float(spacing[-2]) / float(spacing[-1])
    return vol, m, representative_slice(m, vol.shape[0]), aspect


def _draw_slice(ax, vol, m, z, aspect, label_names) -> None:
    lo, hi = window(vol)
    ax.imshow(vol[z], cmap="gray", vmin=lo, vmax=hi, aspect=aspect, interpolation="nearest")
    slice_text = f"slice {z} (0..{vol.shape[0] - 1})" if vol.shape[0] > 1 else "image"
    ax.set_title(slice_text + (" + mask outline" if m is not None else ""), fontsize=8)
    if m is not None:
        handles = _outline(ax, m[z], label_names or {})
        if handles:
            ax.legend(handles=handles, fontsize=6, loc="lower right", framealpha=0.6)
    ax.axis("off")


def _save(fig: Figure, path: str, dpi: int = 110) -> str:
    fig.tight_layout()
    FigureCanvasAgg(fig)
    atomic_save_image(lambda tmp: fig.savefig(tmp, format="png", dpi=dpi), path)
    return path


def slice_figure(image: np.ndarray, mask: Optional[np.ndarray], path: str, *,
                 spacing: Optional[Sequence[float]] = None,
                 label_names: Optional[Mapping[int, str]] = None) -> Tuple[str, int]:
    """Only the representative slice with the outline (the page's picture and the index thumbnail)."""
    vol, m, z, aspect = _prepare(image, mask, spacing)
    fig = Figure(figsize=(4.0, 4.0))
    _draw_slice(fig.add_subplot(1, 1, 1), vol, m, z, aspect, label_names)
    return _save(fig, path), z


def case_figure(image: np.ndarray, mask: Optional[np.ndarray], lines: Sequence[str], path: str, *,
                title: str = "", cam_png: Optional[str] = None, spacing: Optional[Sequence[float]] = None,
                label_names: Optional[Mapping[int, str]] = None) -> Tuple[str, int]:
    """Write the one-picture summary of a case; returns (path, slice index shown).

    Args:
        image, mask: (y, x) or (z, y, x); the mask may be None (classification-only models).
        lines: prediction lines for the text panel.
        cam_png: a Grad-CAM overlay PNG shown as the middle panel.
        spacing: voxel spacing in the array's order, for the pixel aspect ratio.
        label_names: mask value -> structure name, for the legend.
    """
    vol, m, z, aspect = _prepare(image, mask, spacing)
    n_panels = 2 + (cam_png is not None)
    fig = Figure(figsize=(3.6 * n_panels, 3.9))
    axes = [fig.add_subplot(1, n_panels, i + 1) for i in range(n_panels)]
    _draw_slice(axes[0], vol, m, z, aspect, label_names)
    if cam_png is not None:
        with Image.open(cam_png) as im:
            axes[1].imshow(np.asarray(im.convert("RGB")))
        axes[1].set_title("Grad-CAM", fontsize=8)
        axes[1].axis("off")
    axes[-1].text(0.0, 1.0, "\n".join(lines), va="top", ha="left", fontsize=8, family="monospace", wrap=True)
    axes[-1].axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path), z
