"""Report-ready PNGs of explanation maps: image + heat map + structure outline.

Uses matplotlib's object API with the Agg canvas (no pyplot, no global backend switch), so
importing or calling it from a pipeline or a worker thread has no side effects.
Arrays come in the image reader's order ((z, y, x); spacing in the same order).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

from nnunet_mtl.io_utils import atomic_save_image

CMAP = "jet"
OUTLINE_COLORS = ("lime", "magenta", "cyan", "yellow", "orange", "white")  # label 1, 2, ... (cycled)


def strongest_slices(cam: np.ndarray, k: int = 3) -> list:
    """Indices (ascending) of the k axial slices (axis 0) holding the most map mass."""
    mass = cam.reshape(cam.shape[0], -1).sum(1)
    k = max(1, min(int(k), cam.shape[0]))
    return sorted(int(i) for i in np.argsort(-mass, kind="stable")[:k])


def save_map_png(cam2d: np.ndarray, path: str) -> str:
    """The map alone, colour-mapped at the image's pixel grid."""
    rgb = (colormaps[CMAP](np.clip(cam2d, 0, 1))[..., :3] * 255).astype(np.uint8)
    atomic_save_image(lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"), path)
    return path


def _window(image: np.ndarray):
    """Grey-value window from the 1st/99th percentile (of the whole volume in 3D: panels compare)."""
    lo, hi = np.percentile(image, [1, 99])
    return (float(lo), float(hi if hi > lo else lo + 1))


def _panel(ax, image2d, cam2d, mask2d: Optional[np.ndarray], aspect: float, title: str, window):
    ax.imshow(image2d, cmap="gray", vmin=window[0], vmax=window[1], aspect=aspect, interpolation="nearest")
    heat = colormaps[CMAP](np.clip(cam2d, 0, 1))
    heat[..., 3] = 0.6 * np.clip(cam2d, 0, 1)  # transparent where the map is weak
    ax.imshow(heat, aspect=aspect, interpolation="bilinear")
    if mask2d is not None:
        for label in [v for v in np.unique(mask2d) if v > 0]:
            inside = (mask2d == label).astype(float)
            if inside.any() and not inside.all():
                ax.contour(inside, levels=[0.5], colors=OUTLINE_COLORS[(int(label) - 1) % len(OUTLINE_COLORS)],
                           linewidths=1.0)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _colorbar(fig: Figure, axes) -> None:
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize
    bar = fig.colorbar(ScalarMappable(Normalize(0, 1), CMAP), ax=axes, fraction=0.035, pad=0.02)
    bar.ax.tick_params(labelsize=7)
    bar.set_label("map (case max = 1)", fontsize=7)


def _save(fig: Figure, path: str) -> str:
    FigureCanvasAgg(fig)
    atomic_save_image(lambda tmp: fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight"), path)
    return path


def overlay_2d(image2d: np.ndarray, cam2d: np.ndarray, mask2d: Optional[np.ndarray], spacing_yx: Sequence[float],
               path: str, title: str = "") -> str:
    """One panel: image, heat map, optional outline per label; pixel aspect from the spacing."""
    fig = Figure(figsize=(4.6, 4))
    ax = fig.add_subplot(1, 1, 1)
    _panel(ax, image2d, cam2d, mask2d, float(spacing_yx[0]) / float(spacing_yx[1]), title, _window(image2d))
    _colorbar(fig, [ax])
    return _save(fig, path)


def overlay_3d(image: np.ndarray, cam: np.ndarray, mask: Optional[np.ndarray], spacing_zyx: Sequence[float],
               slices: Sequence[int], path: str, title: str = "") -> str:
    """One row of axial panels, the given slices, each with heat map and one outline per label."""
    fig = Figure(figsize=(3.2 * len(slices) + 0.6, 3.6))
    aspect = float(spacing_zyx[1]) / float(spacing_zyx[2])
    window = _window(image)
    axes = [fig.add_subplot(1, len(slices), i + 1) for i in range(len(slices))]
    for ax, z in zip(axes, slices):
        _panel(ax, image[z], cam[z], None if mask is None else mask[z], aspect, f"slice {z}", window)
    _colorbar(fig, axes)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)
