"""Static HTML review pages: ``cases/<case>.html`` + ``cases/<case>.png`` per case and ``index.html``.

Everything a page shows sits in the report folder and is linked relatively (a given Grad-CAM PNG is
copied in), the CSS is inline and there is no script, so the folder opens from disk in any
browser and can be zipped and sent as it is.
"""
from __future__ import annotations

import html
import math
import os
import re
import shutil
from dataclasses import dataclass
from typing import List, Mapping, Optional, Sequence, Tuple
from urllib.parse import quote

import numpy as np

from nnunet_mtl.io_utils import atomic_save_image, atomic_write_text
from nnunet_mtl import case_checks
from nnunet_mtl.prediction_table import (CALIBRATED_COLUMN, CASE_COLUMN, COVERAGE_COLUMN, FLAG_COLUMNS, REVIEW_COLUMN,
                                         SET_SEPARATOR, YES, flags, interval_columns, prob_column, review_cells,
                                         set_column)
from nnunet_mtl.outputs.report.figure import as_volume, case_figure, slice_figure
from nnunet_mtl.targets import Target, TargetSpec

CASES_DIR = "cases"
_FLAGGED = ' class="flagged"'  # a table row to look at (highlighted by the CSS)
INDEX = "index.html"
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.4em;margin:.2em 0}
table{border-collapse:collapse;margin:.8em 0}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;vertical-align:middle;font-size:.92em}
th{background:#f0f0f0}
.bar{display:inline-block;width:120px;height:.8em;background:#eee;vertical-align:middle;margin-right:.4em}
.bar span{display:block;height:100%;background:#3a7bd5}
.note{color:#555;font-size:.9em}
.raw{color:#a05a00}.cal{color:#1f7a1f}
img{max-width:100%;height:auto;border:1px solid #ddd}
img.thumb{max-width:140px}
.pics{display:flex;flex-wrap:wrap;gap:1em;align-items:flex-start}.pics img{max-height:440px}
figure{margin:1em 0}figcaption{color:#555;font-size:.85em}
nav a{font-size:.9em}
h2{font-size:1.1em;margin:1em 0 .2em}
tr.flagged td{background:#fff3cd}
.flag{color:#a00;font-weight:bold}
"""


@dataclass(frozen=True)
class CaseReport:
    """The files written for one case: the page, its one-picture summary, the slice picture."""
    html: str
    png: str
    slice_png: str
    slice_index: int


def case_stem(case_id: str) -> str:
    """A file name for the case: letters, digits, '.', '_' and '-' kept, anything else '_'."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", str(case_id)) or "case"


def _prob(row: Mapping, target: Target, cls: str) -> float:
    value = row.get(prob_column(target.name, cls))
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _is_calibrated(row: Mapping, calibrated: bool) -> bool:
    return bool(calibrated) or str(row.get(CALIBRATED_COLUMN, "")).lower() in ("yes", "true", "1")


def calibration_note(calibrated: bool) -> str:
    return ("calibrated (temperature scaling on validation cases)" if calibrated
            else "not calibrated (raw softmax)")


def prediction_lines(row: Mapping, spec: TargetSpec, calibrated: bool) -> List[str]:
    """Plain-text lines of every target's prediction (the PNG's text panel)."""
    lines = []
    for t in spec:
        if t.is_classification:
            cls = str(row.get(t.name, ""))
            lines.append(f"{t.name}: {cls} (p = {_prob(row, t, cls):.2f})")
            lines += [f"  p({c}) = {_prob(row, t, c):.3f}" for c in t.classes]
        else:
            lines.append(f"{t.name}: {_fmt_value(row.get(t.name))}{' ' + t.unit if t.unit else ''}")
    lines.append("")
    lines.append("probabilities " + calibration_note(calibrated))
    items = review_items(row, spec)
    if items:
        raised = flags(row)
        lines.append("review: " + ("FLAGGED (" + ", ".join(raised) + ")" if raised else "no flag raised"))
        lines += [f"  {what}: {value}" for what, value, _ in items]
    return lines


def _fmt_number(text) -> str:
    """A table cell as a number for people: 4 significant digits, infinities as such, '—' when not a number."""
    try:
        v = float(text)
    except (TypeError, ValueError):
        return "—"
    if math.isnan(v):
        return "—"
    return ("∞" if v > 0 else "-∞") if math.isinf(v) else f"{v:.4g}"


def review_items(row: Mapping, spec: TargetSpec) -> List[Tuple[str, str, bool]]:
    """(what, value, flagged) for each review column the row fills (``prediction_table.review_cells``): each
    target's prediction set or interval, the coverage, ``needs_review``, ``seg_quality`` and ``ood_score`` with
    their flags. [] for an older table without them; a cell that is not what it should be is shown as written
    (numbers as '—'), never an error."""
    cells = review_cells(row, spec)
    items: List[Tuple[str, str, bool]] = []
    for t in spec:
        if t.is_classification and set_column(t.name) in cells:
            members = [c for c in cells[set_column(t.name)].split(SET_SEPARATOR) if c]
            items.append((f"{t.name}: prediction set", ", ".join(members) or "(empty: no class fits)",
                          len(members) != 1))
        elif not t.is_classification and all(c in cells for c in interval_columns(t.name)):
            low, high = (_fmt_number(cells[c]) for c in interval_columns(t.name))
            items.append((f"{t.name}: interval", f"{low} to {high}{' ' + t.unit if t.unit else ''}",
                          "∞" in low + high))
    if COVERAGE_COLUMN in cells:
        items.append(("conformal coverage (sets and intervals made for)", cells[COVERAGE_COLUMN], False))
    if REVIEW_COLUMN in cells:
        items.append(("needs review (a set of not one class, or a too wide interval)", cells[REVIEW_COLUMN],
                      cells[REVIEW_COLUMN].lower() == YES))
    for score, flag, what, why in ((case_checks.SEG_QUALITY, case_checks.SEG_QUALITY_FLAG,
                                    "seg_quality (estimated Dice of the mask)", "below the fold's threshold"),
                                   (case_checks.OOD_SCORE, case_checks.OOD_FLAG,
                                    "ood_score (above 1: unlike the training data)", "above 1")):
        if score in cells or flag in cells:
            flagged = cells.get(flag, "").lower() == YES
            items.append((what, _fmt_number(cells.get(score)) + (f" (flagged: {why})" if flagged else ""), flagged))
    return items


def _review_section(row: Mapping, spec: TargetSpec) -> str:
    """The case page's review table; '' when the row has no review column (older tables)."""
    items = review_items(row, spec)
    if not items:
        return ""
    e = html.escape
    raised = flags(row)
    head = (f'<p class="flag">Flagged for review: {e(", ".join(raised))}.</p>' if raised
            else '<p class="note">No review flag raised.</p>')
    lines = [f"<tr{_FLAGGED if flagged else ''}><td>{e(what)}</td><td>{e(value)}</td></tr>"
             for what, value, flagged in items]
    return ("<h2>Review</h2>\n" + head + "\n<table>\n<thead><tr><th>check</th><th>value</th></tr></thead>\n<tbody>\n"
            + "\n".join(lines) + "\n</tbody>\n</table>\n"
            '<p class="note">Sets and intervals hold the truth for about the stated share of cases like the '
            "validation cases, not for every case; seg_quality and ood_score are screening aids, not a verdict.</p>")


def _fmt_value(value) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return "—"
    return "—" if not math.isfinite(v) else f"{v:.4g}"


def _bar(p: float) -> str:
    width = 0.0 if not math.isfinite(p) else max(0.0, min(1.0, p)) * 100
    return f'<span class="bar"><span style="width:{width:.1f}%"></span></span>'


def _target_rows(row: Mapping, spec: TargetSpec) -> str:
    out = []
    for t in spec:
        e = html.escape
        if t.is_classification:
            cls = str(row.get(t.name, ""))
            probs = "<br>".join(f"{_bar(_prob(row, t, c))}{e(c)}: {_prob(row, t, c):.3f}" for c in t.classes)
            out.append(f"<tr><td>{e(t.name)}</td><td><b>{e(cls)}</b></td><td>{_prob(row, t, cls):.3f}</td>"
                       f"<td>{probs}</td></tr>")
        else:
            unit = f" {e(t.unit)}" if t.unit else ""
            out.append(f"<tr><td>{e(t.name)}</td><td><b>{_fmt_value(row.get(t.name))}{unit}</b></td>"
                       f"<td>—</td><td>regression</td></tr>")
    return "\n".join(out)


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def write_case_report(image_array: np.ndarray, mask_array: Optional[np.ndarray], predictions_row: Mapping,
                      spec: TargetSpec, out_dir: str, cam_png: Optional[str] = None, calibrated: bool = False, *,
                      spacing: Optional[Sequence[float]] = None,
                      label_names: Optional[Mapping[str, int]] = None) -> CaseReport:
    """Write ``out_dir/cases/<case>.html`` and ``<case>.png`` for one case.

    Args:
        image_array: the case image, (y, x) or (z, y, x) (one channel).
        mask_array: the predicted label map in the same grid, or None.
        predictions_row: the case's ``predictions.csv`` row (``prediction_table``); ``case_id`` names the files.
        spec: the target spec.
        out_dir: the report folder (shared with ``write_index``).
        cam_png: a Grad-CAM overlay PNG (``explain_overlay``), copied next to the page and shown.
        calibrated: whether the probabilities are calibrated (also read from the row's
            ``probabilities_calibrated`` column when present).
        spacing: voxel spacing in the array's order (pixel aspect ratio of the picture).
        label_names: ``dataset.json`` ``labels`` (name -> value), for the outline legend.
    """
    case_id = str(predictions_row[CASE_COLUMN])
    stem = case_stem(case_id)
    folder = os.path.join(out_dir, CASES_DIR)
    os.makedirs(folder, exist_ok=True)
    calibrated = _is_calibrated(predictions_row, calibrated)
    names = {int(v): str(k) for k, v in (label_names or {}).items() if isinstance(v, (int, np.integer)) and v != 0}
    cam_name = None
    if cam_png is not None:
        cam_name = f"{stem}_gradcam.png"
        atomic_save_image(lambda tmp: shutil.copyfile(cam_png, tmp), os.path.join(folder, cam_name))
    slice_png, _ = slice_figure(image_array, mask_array, os.path.join(folder, f"{stem}_slice.png"), spacing=spacing,
                                label_names=names)
    png, z = case_figure(image_array, mask_array, prediction_lines(predictions_row, spec, calibrated),
                         os.path.join(folder, f"{stem}.png"), title=case_id, cam_png=cam_png, spacing=spacing,
                         label_names=names)
    e = html.escape
    n_slices = as_volume(image_array, "image").shape[0]
    where = (f"slice {z} of 0..{n_slices - 1}, numbered like the Grad-CAM panels (most predicted foreground)"
             if n_slices > 1 else "the image")
    cls = "cal" if calibrated else "raw"
    body = [f'<nav><a href="../{INDEX}">&larr; all cases</a></nav>', f"<h1>{e(case_id)}</h1>",
            f'<p class="note">Probabilities: <span class="{cls}">{e(calibration_note(calibrated))}</span>.</p>',
            "<table>\n<thead><tr><th>target</th><th>prediction</th><th>probability</th><th>classes</th></tr></thead>",
            f"<tbody>\n{_target_rows(predictions_row, spec)}\n</tbody>\n</table>",
            _review_section(predictions_row, spec),
            '<div class="pics">',
            f'<figure><img src="{quote(stem)}_slice.png" alt="{e(case_id)}: {e(where)}'
            f'{" with mask outline" if mask_array is not None else ""}">',
            f"<figcaption>Shown: {e(where)}{'; mask outline per structure' if mask_array is not None else ''}."
            f"</figcaption></figure>"]
    if cam_name:
        body.append(f'<figure><img src="{quote(cam_name)}" alt="Grad-CAM of {e(case_id)}">'
                    f"<figcaption>Grad-CAM overlay.</figcaption></figure>")
    body.append("</div>")
    body.append(f'<p><a href="{quote(stem)}.png">The case as one picture (PNG)</a>: image, outline'
                f'{", Grad-CAM" if cam_name else ""} and predictions, for slides or a message.</p>')
    path = os.path.join(folder, f"{stem}.html")
    atomic_write_text(path, _page(f"{case_id}: nnunet_mtl case report", "\n".join(body)))
    return CaseReport(path, png, slice_png, z)


def sort_key_for(spec: TargetSpec, sort_target: Optional[str] = None,
                 sort_class: Optional[str] = None) -> Tuple[Optional[Target], Optional[str], str]:
    """(target, class, description) the index sorts by: by default the first classification target,
    its last class for a binary target (the positive one), else the predicted class's probability."""
    targets = spec.classification_targets
    if sort_target is not None:
        target = spec[sort_target]
        if not target.is_classification:
            raise ValueError(f"cannot sort by probability of the regression target {sort_target!r}")
    elif targets:
        target = targets[0]
    else:
        return None, None, "case id"
    if sort_class is None and len(target.classes) == 2:
        sort_class = target.classes[-1]
    if sort_class is not None and sort_class not in target.classes:
        raise ValueError(f"{sort_class!r} is not a class of {target.name!r} ({list(target.classes)})")
    desc = (f"p({target.name} = {sort_class})" if sort_class else f"p(predicted {target.name} class)")
    return target, sort_class, desc + ", highest first"


def _sort_value(row: Mapping, target: Target, sort_class: Optional[str]) -> float:
    value = _prob(row, target, sort_class if sort_class else str(row.get(target.name, "")))
    return -math.inf if math.isnan(value) else value


def _review_cell(row: Mapping, spec: TargetSpec) -> str:
    """The index's review cell: what is flagged (or 'no flag'), then the scores and sets the row has."""
    e = html.escape
    raised = flags(row)
    head = f'<span class="flag">&#9873; {e(", ".join(raised))}</span>' if raised else "no flag"
    shown = [f"{e(what.split(' (')[0])}: {e(value)}" for what, value, _ in review_items(row, spec)
             if not what.startswith(("conformal coverage", "needs review"))]
    return "<br>".join([head] + shown)


def write_index(out_dir: str, rows: Sequence[Mapping], spec: TargetSpec, *, sort_target: Optional[str] = None,
                sort_class: Optional[str] = None, calibrated: bool = False,
                title: str = "nnunet_mtl case review") -> str:
    """Write ``out_dir/index.html``: every row a line, sorted by probability (see ``sort_key_for``);
    cases with a page (``write_case_report``) link to it and show its PNG as a thumbnail. When the table has
    review columns, a ``review`` column says what is flagged, flagged rows are highlighted, listed first and
    counted at the top."""
    target, cls, desc = sort_key_for(spec, sort_target, sort_class)
    reviewed = any(review_items(r, spec) for r in rows)  # older tables: no review column, order as before
    first = (lambda r: not flags(r)) if reviewed else (lambda r: False)
    if target is None:
        ordered = sorted(rows, key=lambda r: (first(r), str(r[CASE_COLUMN])))
    else:
        ordered = sorted(rows, key=lambda r: (first(r), -_sort_value(r, target, cls), str(r[CASE_COLUMN])))
    e = html.escape
    head = ("<th>review</th>" if reviewed else "") + "".join(
        f"<th>{e(t.name)}{' (p)' if t.is_classification else ''}</th>" for t in spec)
    lines = []
    for rank, row in enumerate(ordered, 1):
        case_id = str(row[CASE_COLUMN])
        stem = case_stem(case_id)
        has_page = os.path.isfile(os.path.join(out_dir, CASES_DIR, f"{stem}.html"))
        has_png = os.path.isfile(os.path.join(out_dir, CASES_DIR, f"{stem}_slice.png"))
        href = f"{CASES_DIR}/{quote(stem)}"
        name = f'<a href="{href}.html">{e(case_id)}</a>' if has_page else e(case_id)
        thumb = (f'<a href="{href}.html"><img class="thumb" src="{href}_slice.png" alt="{e(case_id)}" '
                 f'loading="lazy"></a>'
                 if has_page and has_png else "")
        cells = []
        for t in spec:
            if t.is_classification:
                c = str(row.get(t.name, ""))
                p = _prob(row, t, cls if (t is target and cls) else c)
                shown = f"{e(c)} ({_prob(row, t, c):.2f})"
                if t is target and cls:
                    shown += f"<br>{_bar(p)}p({e(cls)}) = {p:.2f}"
                cells.append(f"<td>{shown}</td>")
            else:
                cells.append(f"<td>{_fmt_value(row.get(t.name))}{' ' + e(t.unit) if t.unit else ''}</td>")
        review = f"<td>{_review_cell(row, spec)}</td>" if reviewed else ""
        lines.append(f"<tr{_FLAGGED if flags(row) else ''}><td>{rank}</td><td>{name}</td><td>{thumb}</td>{review}"
                     f"{''.join(cells)}</tr>")
    any_cal = calibrated or any(_is_calibrated(r, False) for r in rows)
    if reviewed:
        n_flagged = sum(bool(flags(r)) for r in rows)
        desc = f"flagged first, then {desc}"
        title_note = (f'<p class="{"flag" if n_flagged else "note"}">{n_flagged} of {len(rows)} cases flagged for '
                      f"review ({', '.join(FLAG_COLUMNS)} = yes), highlighted and listed first.</p>\n")
    else:
        title_note = ""
    body = (f"<h1>{e(title)}</h1>\n{title_note}<p class=\"note\">{len(ordered)} cases, sorted by {e(desc)}. "
            f"Probabilities "
            f"{e(calibration_note(any_cal))}.</p>\n<table>\n<thead><tr><th>#</th><th>case</th><th>picture</th>{head}"
            f"</tr></thead>\n<tbody>\n" + "\n".join(lines) + "\n</tbody>\n</table>")
    path = os.path.join(out_dir, INDEX)
    atomic_write_text(path, _page(title, body))
    return path
