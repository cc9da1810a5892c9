"""Display helpers for notebooks/nnunet_mtl_demo.ipynb.

The notebook's cells stay a few lines long by calling these. Figures are drawn on a bare
``matplotlib.figure.Figure`` (like nnunet_mtl's plotting modules, which never touch pyplot or the
backend) and shown as PNG bytes, whatever backend is active. Every function also works outside
Jupyter (display falls back to printing).
"""
from __future__ import annotations

import csv
import glob
import html
import io
import json
import os
import re
import sys
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

from nnunet_mtl import prediction_table
from nnunet_mtl.dataset_spec import DatasetSpec, targets_from_plans
from nnunet_mtl.training.knobs import BUDGETS
from nnunet_mtl.conversion.file_names import CHANNEL_DIGITS, channel_file, predicted_mask

BASE_DIR_ENV = "NNUNET_MTL_NOTEBOOK_BASE_DIR"
BUDGET_ENV = "NNUNET_MTL_NOTEBOOK_BUDGET"

# "demo" is pipeline.py --demo's budget (read from nnunet_mtl.training.knobs, so the two never drift),
# "tiny" is what the notebook test uses: enough to exercise every step, not to learn anything.
TINY_BUDGET = {
    "n_cases": 10, "n_test": 2, "planner": "plain", "n_bootstrap": 20,
    "shrink": dict(max_features=16, batch_size=2, n_stages=4),
    "train": dict(BUDGETS["tiny"]),
}


# ------------------------------------------------------------------------------------------ set-up
def in_colab() -> bool:
    """True inside Google Colab (its runtime module is importable only there)."""
    return "google.colab" in sys.modules or os.environ.get("COLAB_RELEASE_TAG") is not None


def find_repo_root(start: Optional[str] = None) -> Optional[str]:
    """The checkout holding pipeline.py and nnunet_mtl/, searching upwards (the notebook runs from notebooks/)."""
    here = os.path.abspath(start or os.getcwd())
    while True:
        if os.path.isfile(os.path.join(here, "pipeline.py")) and os.path.isdir(os.path.join(here, "nnunet_mtl")):
            return here
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def budget(name: str) -> dict:
    """Dataset size, plan shrink and training knobs for a named budget: 'tiny', 'demo' or 'full'.

    'full' keeps nnU-Net's own plans and the trainer's defaults (what you want on real data with a GPU)."""
    if name == "tiny":
        return json.loads(json.dumps(TINY_BUDGET))
    if name == "demo":
        from nnunet_mtl.training.knobs import DEMO_BUDGET, DEMO_SHRINK
        return {"n_cases": 30, "n_test": 6, "planner": "resenc_m", "n_bootstrap": 200,
                "shrink": dict(DEMO_SHRINK["2d"]), "train": dict(DEMO_BUDGET)}
    if name == "full":
        return {"n_cases": 30, "n_test": 6, "planner": "resenc_m", "n_bootstrap": 1000, "shrink": None, "train": {}}
    raise ValueError(f"unknown budget {name!r}: use 'tiny', 'demo' or 'full'")


# ------------------------------------------------------------------------------------------ display
def _plain_style():
    """matplotlib's default look: nnU-Net's progress plot sets a global seaborn style with huge fonts."""
    import matplotlib
    return matplotlib.rc_context({k: v for k, v in matplotlib.rcParamsDefault.items()
                                  if k not in ("backend", "interactive")})


def _display(obj, fallback: str = "") -> None:
    try:
        from IPython.display import display
    except ImportError:
        print(fallback or obj)
        return
    display(obj)


def show_figure(fig) -> None:
    """Show a matplotlib Figure inline as a PNG, independent of the active backend."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    try:
        from IPython.display import Image
    except ImportError:
        print(f"<figure, {len(buf.getvalue())} bytes of PNG>")
        return
    _display(Image(data=buf.getvalue(), format="png"))


def show_png(path: Optional[str], width: Optional[int] = None) -> None:
    """Show a PNG file written by the library (evaluation plots, Grad-CAM overlays)."""
    if not path or not os.path.isfile(path):
        print(f"(not found: {path})")
        return
    try:
        from IPython.display import Image
    except ImportError:
        print(path)
        return
    _display(Image(filename=path, width=width))


EVALUATION_PLOTS = ("confusion_*.png", "roc_*.png", "dsc_distribution.png", "coverage_*.png", "seg_quality_vs_dice.png")


def show_pngs(folder: str, patterns: Sequence[str] = EVALUATION_PLOTS) -> None:
    """Show the evaluation folder's plots in a fixed order (confusion matrices, ROC curves, DSC, then the review
    columns' conformal coverage and seg_quality against Dice when the table had them)."""
    shown = []
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(folder, pattern))):
            print(os.path.basename(path))
            show_png(path)
            shown.append(path)
    if not shown:
        print(f"(no plots in {folder})")


def read_csv_rows(path: str) -> List[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def html_table(rows: Sequence[Mapping], max_rows: int = 50, digits: int = 3) -> str:
    """A plain HTML table for when pandas is not installed."""
    if not rows:
        return "<p>(empty table)</p>"
    cols = list(rows[0])

    def cell(v):
        try:
            return f"{float(v):.{digits}f}" if re.fullmatch(r"-?\d+\.\d+(e-?\d+)?", str(v)) else html.escape(str(v))
        except ValueError:
            return html.escape(str(v))
    head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r.get(c, ''))}</td>" for c in cols) + "</tr>"
                   for r in rows[:max_rows])
    more = f"<p>... {len(rows) - max_rows} more rows</p>" if len(rows) > max_rows else ""
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{more}"


def _show_html_rows(rows: Sequence[Mapping], max_rows: int) -> None:
    try:
        from IPython.display import HTML
    except ImportError:
        print("\n".join(",".join(str(v) for v in r.values()) for r in rows[:max_rows]))
        return
    _display(HTML(html_table(rows, max_rows)))


def show_table(csv_path: str, max_rows: int = 50) -> None:
    """Show a CSV (predictions.csv, per_case.csv) as a table: a pandas DataFrame when pandas is installed,
    else an HTML table. Returns nothing, so a cell ending in it shows the table once."""
    try:
        import pandas as pd
    except ImportError:
        _show_html_rows(read_csv_rows(csv_path), max_rows)
        return
    _display(pd.read_csv(csv_path).head(max_rows).round(3))


def show_rows(rows: Sequence[Mapping], max_rows: int = 50) -> None:
    """Show a list of dicts as a table (a pandas DataFrame when pandas is installed, else HTML)."""
    try:
        import pandas as pd
    except ImportError:
        _show_html_rows(rows, max_rows)
        return
    _display(pd.DataFrame(list(rows)).head(max_rows).round(3))


def show_metrics(metrics: Mapping) -> None:
    """An evaluation's summary (whole cases): the same lines ``evaluation.py`` prints (scores with their
    95% CIs), then the DSC table, one row per label and region."""
    from nnunet_mtl.evaluation.summary import dice_rows, summary_lines
    print("\n".join(summary_lines(metrics)))
    rows = dice_rows(metrics)
    if rows:
        show_rows(rows)


# ------------------------------------------------------------------------------------------ images
def _read(path: str) -> np.ndarray:
    import SimpleITK as sitk
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def _slice(image: np.ndarray, mask: Optional[np.ndarray]) -> tuple:
    """A 2D view: the image itself for 2D data, else the slice with the most foreground (or the middle one)."""
    if image.ndim == 2:
        return image, mask
    if image.shape[0] == 1:
        return image[0], None if mask is None else mask[0]
    k = int(np.argmax((mask > 0).reshape(mask.shape[0], -1).sum(1))) if mask is not None and mask.any() \
        else image.shape[0] // 2
    return image[k], None if mask is None else mask[k]


def case_files(image_dir: str, mask_dir: Optional[str], file_ending: str = ".nii.gz") -> Dict[str, tuple]:
    """case_id -> (first channel image, mask or None) for an nnU-Net-style folder pair."""
    out = {}
    suffix = channel_file("", 0, file_ending)
    for path in sorted(glob.glob(os.path.join(image_dir, "*" + suffix))):
        cid = os.path.basename(path)[:-len(suffix)]
        out[cid] = (path, predicted_mask(mask_dir, cid, file_ending) if mask_dir else None)
    return out


def show_cases(image_dir: str, mask_dir: Optional[str] = None, n: int = 4, file_ending: str = ".nii.gz",
               captions: Optional[Mapping[str, str]] = None, case_ids: Optional[Sequence[str]] = None) -> None:
    """Show ``n`` cases with their mask outlined/filled on top (ground truth from labelsTr, or predicted
    masks from an output folder). ``captions`` adds a line per case (its label or predicted class)."""
    files = case_files(image_dir, mask_dir, file_ending)
    ids = [c for c in (case_ids or sorted(files)) if c in files][:n]
    if not ids:
        print(f"(no images *{channel_file('', 0, file_ending)} in {image_dir})")
        return
    with _plain_style():
        _draw_cases(files, ids, captions)


def _draw_cases(files: Mapping[str, tuple], ids: Sequence[str], captions: Optional[Mapping[str, str]]) -> None:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(3.2 * len(ids), 3.6))
    axes = fig.subplots(1, len(ids), squeeze=False)[0]
    for ax, cid in zip(axes, ids):
        img_path, mask_path = files[cid]
        image, mask = _slice(_read(img_path).astype(np.float32), _read(mask_path) if mask_path else None)
        lo, hi = np.percentile(image, (0.5, 99.5))
        ax.imshow(image, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1)
        if mask is not None and mask.any():
            ax.imshow(np.ma.masked_equal(mask, 0), cmap="tab10", alpha=0.4, vmin=0, vmax=9, interpolation="nearest")
        title = cid + (f"\n{captions[cid]}" if captions and cid in captions else "")
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.tight_layout()
    show_figure(fig)


def label_captions(dataset_json_path: str) -> Dict[str, str]:
    """case_id -> 'target=value, ...' from a converted dataset.json's mtl block."""
    table = DatasetSpec.from_file(dataset_json_path).table
    return {cid: ", ".join(f"{k}={v}" for k, v in table.values[cid].items()) for cid in table.case_ids}


def prediction_captions(csv_path: str, digits: int = 2) -> Dict[str, str]:
    """case_id -> 'target: class (p)' / 'target: value' from a predictions.csv."""
    rows = read_csv_rows(csv_path)
    spec = prediction_table.spec_from_header(list(rows[0]) if rows else [prediction_table.CASE_COLUMN], csv_path)
    out = {}
    for r in rows:
        parts = []
        for t in spec:
            p = r.get(prediction_table.prob_column(t.name, r[t.name])) if t.is_classification else None
            parts.append(f"{t.name}: {r[t.name]} ({float(p):.{digits}f})" if p not in (None, "")
                         else f"{t.name}: {r[t.name]}")
        out[r[prediction_table.CASE_COLUMN]] = ", ".join(parts)
    return out


def show_review(csv_path: str, max_rows: int = 50) -> List[str]:
    """The review columns of a predictions.csv (conformal sets / intervals, needs_review, seg_quality, ood_score and
    their flags; ``prediction_table.review_cells``): one line on how many cases are flagged and which, then a table
    of case_id and the columns the table has, flagged cases first. A table without them (an older run, a model
    without the fold files) gets one line saying so. Returns the flagged case ids."""
    rows = read_csv_rows(csv_path)
    spec = prediction_table.spec_from_header(list(rows[0]) if rows else [prediction_table.CASE_COLUMN], csv_path)
    cells = {r[prediction_table.CASE_COLUMN]: prediction_table.review_cells(r, spec) for r in rows}
    columns = [c for c in list(rows[0]) if any(c in v for v in cells.values())] if rows else []
    if not columns:
        print(f"{os.path.basename(csv_path)}: no review columns (conformal sets, seg_quality, ood_score) in this table")
        return []
    flagged = {r[prediction_table.CASE_COLUMN]: prediction_table.flags(r) for r in rows}
    names = [c for c, f in flagged.items() if f]
    print(f"{len(names)} of {len(rows)} case(s) flagged for review"
          + (": " + "; ".join(f"{c} ({', '.join(flagged[c])})" for c in names) if names else ""))
    order = sorted(cells, key=lambda c: (not flagged[c], c))
    show_rows([{prediction_table.CASE_COLUMN: c, **{k: cells[c].get(k, "") for k in columns}} for c in order],
              max_rows)
    return names


# ------------------------------------------------------------------------------------------ training curve
def load_progress(path: str) -> List[dict]:
    """mtl_progress.json (a file or the fold folder holding it): one record per epoch."""
    if os.path.isdir(path):
        path = os.path.join(path, "mtl_progress.json")
    with open(path) as f:
        return json.load(f)


def plot_training_curve(path: str, show: bool = True):
    """Segmentation and head losses (top) and the phase weights w_seg / w_head (bottom) per epoch,
    from a fold's mtl_progress.json: shows whether the heads trained in the segmentation-first phase.
    Shows it (returns None), or with ``show=False`` returns the Figure."""
    history = load_progress(path)
    if not history:
        print(f"(no epochs recorded in {path})")
        return None
    with _plain_style():
        fig = _draw_curve(history)
        if not show:
            return fig
        show_figure(fig)
    return None


def _draw_curve(history: Sequence[Mapping]):
    from matplotlib.figure import Figure
    epochs = [h["epoch"] for h in history]
    fig = Figure(figsize=(8, 6))
    ax_loss, ax_w = fig.subplots(2, 1, sharex=True)
    series = [("train_seg_loss", "segmentation loss (train)", "tab:blue", "-"),
              ("train_head_loss", "head loss (train)", "tab:red", "-"),
              ("val_head_loss", "head loss (val patches)", "tab:red", "--")]
    per_target = sorted({k for h in history for k in h if k.startswith("train_loss_")})
    if len(per_target) > 1:  # with one target its loss is the head loss
        series += [(k, k[len("train_loss_"):] + " loss (train)", None, ":") for k in per_target]
    for key, label, color, style in series:
        ys = [h.get(key) for h in history]
        if any(isinstance(y, (int, float)) for y in ys):
            ax_loss.plot(epochs, [np.nan if y is None else y for y in ys], style, color=color, marker=".", label=label)
    ax_loss.set_ylabel("loss")
    ax_loss.legend(fontsize=8)
    ax_loss.set_title("losses per epoch")
    ax_w.plot(epochs, [h.get("seg_weight") for h in history], "-", color="tab:blue", marker=".", label="w_seg")
    ax_w.plot(epochs, [h.get("head_weight") for h in history], "-", color="tab:red", marker=".", label="w_head")
    ax_w.set_ylim(0, 1)
    ax_w.set_ylabel("loss weight")
    ax_w.set_xlabel("epoch")
    ax_w.legend(fontsize=8)
    ax_w.set_title("loss weights per epoch (heads: a ramp after the warm-up)")
    fig.tight_layout()
    return fig


# ------------------------------------------------------------------------------------------ Grad-CAM
def explain_available() -> bool:
    """True when nnunet_mtl.outputs.explain (Grad-CAM) and its dependency import cleanly."""
    try:
        from nnunet_mtl.outputs.explain import explain_case  # noqa: F401
    except Exception as e:  # missing module or missing pytorch_grad_cam
        print(f"Grad-CAM not available here ({type(e).__name__}: {e})")
        return False
    return True


def first_classification_target(model_dir: str) -> Optional[str]:
    with open(os.path.join(model_dir, "plans.json")) as f:
        targets = targets_from_plans(json.load(f))
    return next((t.name for t in targets if t.is_classification), None)


def explain_first_case(model_dir: str, image_dir: str, out_dir: str, device: str = "cpu",
                       target: Optional[str] = None, folds=None, file_ending: str = ".nii.gz") -> Optional[str]:
    """Grad-CAM for the first case of an nnU-Net-style image folder (predicted class); returns the overlay PNG."""
    from nnunet_mtl.outputs.explain import explain_case
    target = target or first_classification_target(model_dir)
    first = channel_file("", 0, file_ending)
    files = sorted(glob.glob(os.path.join(image_dir, "*" + first)))
    if target is None or not files:
        print("(no classification target or no image to explain)")
        return None
    case_id = os.path.basename(files[0])[:-len(first)]
    channels = sorted(glob.glob(os.path.join(image_dir, case_id + "_" + "[0-9]" * CHANNEL_DIGITS + file_ending)))
    os.makedirs(out_dir, exist_ok=True)
    paths = explain_case(model_dir, channels, os.path.join(out_dir, case_id), target, folds=folds, device=device)
    return paths.get("overlay_png")
