"""The accuracy benchmark's printed report: the arm table, the wall-time table and the ``summary:`` line.

Kept apart from ``accuracy.py`` (training, prediction, scoring) so the report can be checked on
made-up results in a test that needs no model. Rows are dicts as ``accuracy.py`` builds them:
``arm``, ``trainer``, ``train_s``, ``predict_s``, ``dice`` {structure: value}, ``dice_ratio_min``,
``heads`` {target: metrics}, ``needs`` (the arm whose trained model this one starts from).
"""
from __future__ import annotations

import numpy as np

REFERENCE, DEFAULT_MTL = "stock", "mtl"
# What the pipeline outputs by default for image-level targets (--heads fitted): heads fitted on the default MTL
# model's own features. The summary's auc_default / r_default are this row's.
DEFAULT_OUTPUT = "fitted_mtl"


def fmt(x, digits=3) -> str:
    return "-" if x is None or (isinstance(x, float) and not np.isfinite(x)) else f"{x:.{digits}f}"


def table_lines(rows: list, spec, struct_names, runs: bool = True) -> list:
    """A markdown table: one row per arm/baseline; ``runs=False`` leaves out times and Dice."""
    head = ["arm"] + (["trainer", "train s", "pred s"] + [f"Dice {s}" for s in struct_names] + ["Dice/stock min"]
                      if runs else [])
    for t in spec:
        auc = f"{t.name} AUC" + (" [95% CI]" if len(t.classes) == 2 else "")
        head += ([f"{t.name} F1", f"{t.name} bal.acc", auc] if t.is_classification
                 else [f"{t.name} MAE", f"{t.name} r [95% CI]"])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["arm"]]
        if runs:
            cells += [r.get("trainer", "-"), fmt(r.get("train_s"), 0), fmt(r.get("predict_s"), 0)]
            cells += [fmt(r.get("dice", {}).get(s)) for s in struct_names] + [fmt(r.get("dice_ratio_min"))]
        for t in spec:
            h = r.get("heads", {}).get(t.name)
            if h is None:
                cells += ["-"] * (3 if t.is_classification else 2)
            elif t.is_classification:
                ci = h.get("roc_auc_ci")
                cells += [fmt(h["macro_f1"]), fmt(h["balanced_accuracy"]),
                          fmt(h["roc_auc"]) + (f" [{fmt(ci['low'], 2)}, {fmt(ci['high'], 2)}]" if ci else "")]
            else:
                ci = h["pearson_r_ci"]
                r_text = fmt(h["pearson_r"])
                if r_text != "-":
                    r_text += f" [{fmt(ci['low'], 2)}, {fmt(ci['high'], 2)}]"
                cells += [fmt(h["mae"]), r_text]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


# ------------------------------------------------------------------------------------------ wall time
def time_rows(rows: list) -> list:
    """Seconds per path to a model with image-level outputs: each arm's own training (fitted heads: feature
    extraction of every case + fitting + test prediction), the total from nothing (plus the training of
    the arm it starts from) and both as a ratio to the from-scratch MTL training."""
    by_name = {r["arm"]: r for r in rows}
    scratch = by_name.get(DEFAULT_MTL, {}).get("train_s")
    out = []
    for r in rows:
        own = r.get("train_s")
        if own is None:
            continue
        needs = r.get("needs")
        before = by_name.get(needs, {}).get("train_s") if needs else 0.0
        total = own + before if before is not None else None
        out.append({"arm": r["arm"], "path": r.get("path", r.get("trainer", "")), "needs": needs, "own_s": own,
                    "total_s": total, "own_ratio": own / scratch if scratch else None,
                    "total_ratio": total / scratch if scratch and total is not None else None,
                    "note": r.get("time_note", "")})
    return out


def time_lines(rows: list) -> list:
    head = ["arm", "path", "own s", f"own / {DEFAULT_MTL} training", "total s (incl. the model it starts from)",
            f"total / {DEFAULT_MTL} training", "note"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for t in time_rows(rows):
        total = fmt(t["total_s"], 0) + (f" (+ {t['needs']})" if t["needs"] else "")
        lines.append("| " + " | ".join([t["arm"], t["path"], fmt(t["own_s"], 0), fmt(t["own_ratio"]), total,
                                        fmt(t["total_ratio"]), t["note"] or "-"]) + " |")
    return lines


def frozen_vs_scratch(rows: list):
    """Seconds of the frozen path (heads fitted on the trained stock model) / seconds of the MTL training from
    scratch."""
    by_name = {r["arm"]: r for r in rows}
    fitted, scratch = by_name.get("fitted", {}).get("train_s"), by_name.get(DEFAULT_MTL, {}).get("train_s")
    return fitted / scratch if fitted is not None and scratch else None


# ------------------------------------------------------------------------------------------- summary
def summary_pairs(results: dict, spec) -> list:
    cls = next((t.name for t in spec if t.is_classification), None)
    reg = next((t.name for t in spec if not t.is_classification), None)
    rows = {r["arm"]: r for r in results["rows"]}
    pairs = [("dataset", results["dataset"]), ("n_train", len(results["train"])), ("n_test", len(results["test"])),
             ("epochs", results["budget"]["num_epochs"]), ("iterations", results["budget"]["num_iterations_per_epoch"]),
             ("mirroring", results["mirroring"])]
    mtl = rows.get(DEFAULT_MTL, {})
    pairs.append(("dice_ratio_min", fmt(mtl.get("dice_ratio_min"), 4)))
    default = rows.get(DEFAULT_OUTPUT, {}).get("heads", {})
    if cls and cls in default:
        pairs.append(("auc_default", fmt(default[cls]["roc_auc"])))
    if reg and reg in default:
        pairs.append(("r_default", fmt(default[reg]["pearson_r"])))
    for name, r in rows.items():
        for s, v in r.get("dice", {}).items():
            pairs.append((f"dice_{s}_{name}", fmt(v, 4)))
    for name, r in rows.items():
        h = r.get("heads", {})
        if cls and cls in h:
            pairs.append((f"auc_{name}", fmt(h[cls]["roc_auc"])))
            pairs.append((f"f1_{name}", fmt(h[cls]["macro_f1"])))
        if reg and reg in h:
            pairs.append((f"r_{name}", fmt(h[reg]["pearson_r"])))
            pairs.append((f"mae_{name}", fmt(h[reg]["mae"])))
        if name not in (DEFAULT_MTL, REFERENCE) and r.get("dice_ratio_min") is not None:
            pairs.append((f"dice_ratio_min_{name}", fmt(r["dice_ratio_min"], 4)))
    for name, r in rows.items():
        if r.get("wall_s") is not None:
            pairs.append((f"time_{name}_s", fmt(r["wall_s"], 0)))
    pairs.append(("frozen_vs_scratch_time", fmt(frozen_vs_scratch(results["rows"]), 4)))
    for rule, h in results.get("aggregation", {}).items():  # runs from before fitted heads
        if cls and cls in h.get("heads", {}):
            pairs.append((f"auc_mtl_{rule.replace(':', '_').replace('=', '')}", fmt(h["heads"][cls]["roc_auc"])))
    pairs.append(("skipped", ",".join(results["skipped"]) or "none"))
    pairs.append(("total_s", fmt(results["total_s"], 0)))
    return pairs
