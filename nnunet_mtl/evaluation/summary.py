"""The one human-readable summary of an evaluation (``metrics.json``'s content): the lines the
evaluation CLI and the pipeline's demo print, and the rows of the DSC table the notebook shows."""
from __future__ import annotations

import math
from typing import Dict, List, Mapping

from nnunet_mtl.evaluation.metrics import classification_metrics, regression_metrics
from nnunet_mtl.evaluation.seg_quality import summary_line as seg_quality_line
from nnunet_mtl.targets import TargetSpec

CLASSIFICATION_KEYS = ("macro_f1", "accuracy", "balanced_accuracy", "roc_auc", "sensitivity", "specificity")


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and not math.isfinite(x)) else f"{x:.3f}"


def dice_rows(result: Mapping) -> List[dict]:
    """One row per label and region: its name, the labels it covers, DSC mean/median/std/min/max and n."""
    seg = result.get("segmentation") or {}
    rows = []
    for group in ("labels", "regions"):
        for key, block in seg.get(group, {}).items():
            d = block["dsc"]
            covers = key if group == "labels" else ",".join(str(v) for v in block.get("labels", ()))
            rows.append({"name": block.get("name", key), "labels": covers,
                         **{f"DSC {k}": d.get(k) for k in ("mean", "median", "std", "min", "max")},
                         "n": d.get("n")})
    return rows


def summary_lines(result: Mapping) -> List[str]:
    """Headline numbers with their 95% CIs: cases, DSC per label/region, per-target scores."""
    lines = [f"cases: {result.get('n_cases')}"]
    for row in dice_rows(result):
        lines.append(f"DSC {row['name']}: mean {_fmt(row['DSC mean'])} median {_fmt(row['DSC median'])} "
                     f"std {_fmt(row['DSC std'])}")
    for name, block in (result.get("classification") or {}).items():
        parts = []
        for k in CLASSIFICATION_KEYS:
            if k in block:
                ci = (block.get("ci95") or {}).get(k)
                parts.append(f"{k} {_fmt(block[k])}" + (f" [{_fmt(ci['low'])}, {_fmt(ci['high'])}]" if ci else ""))
        lines.append(f"{name} (n={block.get('n', '?')}): " + ", ".join(parts))
    for name, block in (result.get("regression") or {}).items():
        lines.append(f"{name} (n={block.get('n', '?')}): MAE {_fmt(block['mae'])} RMSE {_fmt(block['rmse'])} "
                     f"r {_fmt(block['pearson_r'])}")
    if result.get("seg_quality"):
        lines.append(seg_quality_line(result["seg_quality"]))
    for note in result.get("notes") or ():
        lines.append(f"note: {note}")
    return lines


def format_summary(result: Mapping) -> str:
    """``summary_lines`` as one text."""
    return "\n".join(summary_lines(result))


def whole_case_summary(spec: TargetSpec, rows: List[dict], table) -> Dict[str, object]:
    """Accuracy / macro-F1 (classification) and MAE (regression) over whole-case prediction rows,
    computed by the same functions as evaluation.py so both reports agree."""
    summary, headline = {"n_cases": len(rows), "targets": {}}, []
    for t in spec:
        pairs = [(r[t.name], table.value(r["case_id"], t.name)) for r in rows
                 if table.value(r["case_id"], t.name) is not None]
        if not pairs:
            continue
        if t.is_classification:
            scores = classification_metrics([t.classes.index(g) for _, g in pairs],
                                            [t.classes.index(p) for p, _ in pairs], None, t.classes)
            acc, f1 = scores["accuracy"], scores["macro_f1"]
            summary["targets"][t.name] = {"accuracy": acc, "macro_f1": f1, "n": len(pairs)}
            headline.append(f"{t.name}: accuracy {acc:.3f}, macro-F1 {f1:.3f} (n={len(pairs)})")
        else:
            mae = regression_metrics([g for _, g in pairs], [p for p, _ in pairs])["mae"]
            summary["targets"][t.name] = {"mae": mae, "n": len(pairs)}
            headline.append(f"{t.name}: MAE {mae:.3f} (n={len(pairs)})")
    summary["headline"] = "; ".join(headline)
    return summary
