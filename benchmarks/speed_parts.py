"""Pure pieces of ``inference_speed.py`` (no nnU-Net, no subprocess), kept apart so tests can check them.

* presets: the input sizes a run uses (``--quick`` smoke run, default 2-core CPU run, ``--full`` GPU run);
* replication: N 3D test cases from a few, copied under new names (the benchmark scales the *number* of
  cases; replicas are identical images, which the report says);
* mask comparison: Dice per case and label between two mask folders, PNG or NIfTI;
* classify output: the per-file ``seconds`` column of ``nnunet_mtl_classify``;
* the ``summary:`` line a run ends with.
"""
from __future__ import annotations

import math
import os
import re
import shutil
import statistics
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

PRESETS = {  # what --quick / --full change; explicit flags still win
    "default": dict(sizes=[4, 16, 64], images_2d=200, classify_images=50, repeats=[2], repeats_2d=2),
    "quick": dict(sizes=[4], images_2d=8, classify_images=4, repeats=[1], repeats_2d=1),
    "full": dict(sizes=[10, 40], images_2d=200, classify_images=100, repeats=[3], repeats_2d=3,
                 shape=(64, 128, 160), cases=20, test_cases=10, full_size=True, num_processes=8),
}
NNUNET_CASE = re.compile(r"^(.+)_(\d{4})\.nii\.gz$")
MASK_ENDINGS = (".nii.gz", ".png")


def repeats_per_size(repeats: Sequence[int], sizes: Sequence[int]) -> Dict[int, int]:
    """One repeat count for every size, or one per size (``--repeats 2 2 1`` with ``--sizes 4 16 64``)."""
    if len(repeats) == 1:
        return {s: int(repeats[0]) for s in sizes}
    if len(repeats) != len(sizes):
        raise ValueError(f"--repeats takes one value or one per size ({len(sizes)}), got {list(repeats)}")
    if any(int(r) < 1 for r in repeats):
        raise ValueError(f"every repeat count must be >= 1, got {list(repeats)}")
    return {s: int(r) for s, r in zip(sizes, repeats)}


def check_sizes(sizes: Sequence[int]) -> List[int]:
    """Positive, distinct, ascending (the table reads top to bottom as the load grows)."""
    sizes = [int(s) for s in sizes]
    if not sizes or any(s < 1 for s in sizes) or len(set(sizes)) != len(sizes):
        raise ValueError(f"sizes must be distinct positive numbers of cases, got {sizes}")
    return sorted(sizes)


# ------------------------------------------------------------------------------------------ replication
def source_cases(folder: str) -> Dict[str, List[str]]:
    """{case id: its channel files in order} for a folder in nnU-Net's layout (CASE_XXXX.nii.gz)."""
    cases: Dict[str, Dict[int, str]] = {}
    for f in sorted(os.listdir(folder)):
        m = NNUNET_CASE.match(f)
        if m:
            cases.setdefault(m.group(1), {})[int(m.group(2))] = os.path.join(folder, f)
    return {cid: [ch[i] for i in sorted(ch)] for cid, ch in sorted(cases.items())}


def replica_names(case_ids: Sequence[str], n: int) -> List[tuple]:
    """(new id, source id) for n cases: the sources in turn, each replica round under its own prefix
    (``rep00_case_a``, ``rep00_case_b``, ``rep01_case_a``, ...), so no two new ids are equal."""
    if not case_ids:
        raise ValueError("no source cases to replicate")
    return [(f"rep{i // len(case_ids):02d}_{case_ids[i % len(case_ids)]}", case_ids[i % len(case_ids)])
            for i in range(n)]


def replicate_cases(src: str, dst: str, n: int) -> Dict[str, str]:
    """Fill ``dst`` with exactly n cases copied from ``src`` under new names; returns {new id: source id}.
    Idempotent: files already there with the right size are kept, cases of another run are removed."""
    sources = source_cases(src)
    pairs = replica_names(list(sources), n)
    os.makedirs(dst, exist_ok=True)
    wanted = set()
    for new, old in pairs:
        for ch, path in enumerate(sources[old]):
            target = os.path.join(dst, f"{new}_{ch:04d}.nii.gz")
            wanted.add(os.path.basename(target))
            if not (os.path.isfile(target) and os.path.getsize(target) == os.path.getsize(path)):
                shutil.copyfile(path, target)
    for f in os.listdir(dst):
        if NNUNET_CASE.match(f) and f not in wanted:
            os.remove(os.path.join(dst, f))
    return dict(pairs)


# ------------------------------------------------------------------------------------------ masks
def mask_files(folder: str) -> Dict[str, str]:
    """{case id: mask path}: NIfTI (stock, ours on NIfTI inputs) or PNG (ours on PNG inputs)."""
    out = {}
    for f in sorted(os.listdir(folder)):
        for e in MASK_ENDINGS:
            if f.endswith(e) and not f.startswith("."):
                out[f[:-len(e)]] = os.path.join(folder, f)
    return out


def dice_per_label(x: np.ndarray, y: np.ndarray, labels: Iterable[int]) -> Dict[int, float]:
    """Dice of each label between two label arrays of one shape; a label absent from both counts 1."""
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} vs {y.shape}")
    out = {}
    for lab in labels:
        a, b = x == lab, y == lab
        denom = int(a.sum()) + int(b.sum())
        out[int(lab)] = 1.0 if denom == 0 else 2.0 * int((a & b).sum()) / denom
    return out


def compare_mask_folders(folder_a: str, folder_b: str, labels: Sequence[int], read=None) -> dict:
    """Dice per case and label (min, mean, the worst case) and identical-pixel fraction between two
    folders; ``read(path) -> array`` (default: ``nnunet_mtl.inference.masks.read_mask_array``, which
    reads PNG and NIfTI masks into one layout). Different case sets are an error."""
    if read is None:
        from nnunet_mtl.inference.masks import read_mask_array as read
    a, b = mask_files(folder_a), mask_files(folder_b)
    if set(a) != set(b) or not a:
        raise ValueError(f"{folder_a} vs {folder_b}: different or no cases: {sorted(set(a) ^ set(b))[:5]}")
    dices, agree, worst = [], [], (2.0, None)
    for case in a:
        x, y = np.asarray(read(a[case])), np.asarray(read(b[case]))
        x, y = np.squeeze(x), np.squeeze(y)
        per = dice_per_label(x, y, labels)
        dices.extend(per.values())
        agree.append(float((x == y).mean()))
        if min(per.values()) < worst[0]:
            worst = (min(per.values()), case)
    return {"cases": len(a), "dice_min": min(dices), "dice_mean": float(np.mean(dices)),
            "identical_min": min(agree), "worst_case": worst[1]}


def max_probability_difference(rows_a: Mapping[str, Mapping[str, str]],
                               rows_b: Mapping[str, Mapping[str, str]]) -> float:
    """Largest absolute difference over the ``*_prob_*`` columns of two predictions.csv tables
    ({case id: row}); a case or column in one only is an error."""
    if set(rows_a) != set(rows_b):
        raise ValueError(f"different cases: {sorted(set(rows_a) ^ set(rows_b))[:5]}")
    worst = 0.0
    for cid, row in rows_a.items():
        cols = sorted(k for k in row if "_prob_" in k)
        if cols != sorted(k for k in rows_b[cid] if "_prob_" in k):
            raise ValueError(f"{cid}: different probability columns")
        for k in cols:
            worst = max(worst, abs(float(row[k]) - float(rows_b[cid][k])))
    return worst


# ------------------------------------------------------------------------------------------ classify
CLASSIFY_LINE = re.compile(r"^(?P<file>.+)\t(?P<cls>[^\t]+)\t(?P<prob>[0-9.eE+-]+)\t(?P<sec>[0-9.]+)s$")


def parse_classify_lines(lines: Iterable[str]) -> List[dict]:
    """The result lines of ``nnunet_mtl_classify`` (file, class, probability, seconds, tab-separated);
    an ERROR line is an error here (the benchmark's inputs are all readable)."""
    out = []
    for line in lines:
        line = line.rstrip("\n")
        if "\tERROR\t" in line:
            raise ValueError(f"classify failed on a file: {line}")
        m = CLASSIFY_LINE.match(line)
        if m:
            out.append({"file": m["file"], "class": m["cls"], "probability": float(m["prob"]),
                        "seconds": float(m["sec"])})
    return out


def per_image_seconds(per_file: Sequence[float], arrivals: Sequence[float]) -> dict:
    """Seconds per image after the model is loaded, two ways: the median of classify's own per-file
    column (conversion + preprocessing + prediction of that file), and the mean gap between result
    lines (everything the process did per file, printing included); the first file is left out of both
    (it also pays one-off warm-up)."""
    if len(per_file) < 2 or len(arrivals) != len(per_file):
        raise ValueError("need at least 2 classified files, with one arrival time each")
    gaps = np.diff(np.asarray(arrivals, float))
    return {"median_column": float(statistics.median(per_file[1:])), "mean_gap": float(gaps.mean()),
            "first_file": float(per_file[0]), "files": len(per_file)}


# ------------------------------------------------------------------------------------------ summary
def ratio(stock_seconds: Sequence[float], ours_seconds: Sequence[float]) -> float:
    """stock / ours on the medians: above 1 means ours is faster."""
    return statistics.median(stock_seconds) / statistics.median(ours_seconds)


def format_summary(values: Mapping[str, Optional[float]]) -> str:
    """``summary: key=value ...`` in the given order; floats with 3 decimals (4 for Dice), missing
    values as ``na``; keys must be plain words (the line is parsed by splitting on spaces and '=')."""
    parts = []
    for k, v in values.items():
        if not re.fullmatch(r"[A-Za-z0-9_.]+", k):
            raise ValueError(f"summary key {k!r} must be letters, digits, '_' or '.'")
        if v is None or (isinstance(v, float) and math.isnan(v)):
            parts.append(f"{k}=na")
        elif isinstance(v, (int, np.integer)) and not isinstance(v, bool):
            parts.append(f"{k}={int(v)}")
        elif isinstance(v, str):
            parts.append(f"{k}={v.replace(' ', '_')}")
        else:
            parts.append(f"{k}={float(v):.4f}" if k.startswith("dice") else f"{k}={float(v):.3f}")
    return "summary: " + " ".join(parts)


def parse_summary(line: str) -> Dict[str, str]:
    """The inverse of ``format_summary`` (values as strings)."""
    if not line.startswith("summary: "):
        raise ValueError("not a summary line")
    return dict(p.split("=", 1) for p in line[len("summary: "):].split())


def fit_startup_per_case(points):
    """Least squares ``seconds = start + cases * per_case`` over (cases, seconds); None below two sizes."""
    if len({n for n, _ in points}) < 2:
        return None
    import numpy as np
    n, t = np.array([p[0] for p in points], float), np.array([p[1] for p in points], float)
    per_case, start = np.polyfit(n, t, 1)
    return float(start), float(per_case)
