"""Accuracy benchmark: multi-task heads vs stock nnU-Net vs a frozen-encoder probe, on whole held-out cases.

One run, one dataset (default: the real hippocampus MRI crops in ../shared/data/hippocampus),
one split (70 % train / 30 % held-out test, stratified by the first classification target, by case),
the same plans and the same training budget for every arm:

* arms (table ``ARMS``): stock ``nnUNetTrainer`` (segmentation only) and our trainers / knobs;
  an arm whose trainer or knob this checkout does not know is skipped with a printed line;
* baselines: ``trivial`` (majority class / training mean) and ``probe`` (logistic regression /
  ridge on the stock model's pooled encoder features, ``nnunet_mtl.frozen``, fitted on the
  training split only);
* scores on the test cases: Dice per structure (and each arm's ratio to stock), macro-F1, balanced
  accuracy and ROC AUC per classification target, MAE and Pearson r per regression target;
* ``--aggregation``: the default MTL arm's head metrics under each case-aggregation rule.

Sizes: default (2-core CPU, ~15-20 min: shrunk plans, short budget, no test-time mirroring),
``--quick`` (a smoke run of a few minutes on a subset), ``--full`` (a GPU: planned network,
real budget, mirroring on). The last line is ``summary: key=value ...``; results also go to
``--out``/accuracy.json.
"""
from __future__ import annotations

import argparse
import inspect
import json
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import (knobs_problem, load_average, machine_lines, set_runtime_env, stored_setup,  # noqa: E402
                    train_in_process, trainer_problem)


@dataclass(frozen=True)
class Arm:
    name: str
    trainer: str
    knobs: dict = field(default_factory=dict)
    note: str = ""


# The arms, in order. "stock" is the reference for Dice ratios and the probe's model; "mtl" is the
# default multi-task arm (summary keys, aggregation rules).
ARMS = (
    Arm("stock", "nnUNetTrainer", {}, "nnU-Net as is: SGD lr 1e-2, segmentation only"),
    Arm("mtl", "nnUNetTrainerMTL", {}, "heads on the bottleneck, AdamW lr 1e-4 (seed design)"),
    Arm("mtl_sgd", "nnUNetTrainerMTL", {"optimizer_name": "sgd", "initial_lr": 1e-2, "head_lr": 1e-3},
        "nnU-Net's SGD lr 1e-2 for the network, heads at lr 1e-3"),
    Arm("multiscale", "nnUNetTrainerMTLMultiScale", {}, "heads on encoder stages 0, 1, 2 and the bottleneck"),
    Arm("mask_pooling", "nnUNetTrainerMTLMaskPooling", {}, "heads pool features weighted by the predicted mask"),
    Arm("balanced", "nnUNetTrainerMTLBalancedSampling", {}, "class-balanced case sampling"),
)
REFERENCE, DEFAULT_MTL = "stock", "mtl"

DATASETS = {"hippocampus": 960, "synthetic3d": 961, "synthetic2d": 962}
SIZES = {  # epochs x iterations per epoch, validation iterations, cases (None: all), test-time mirroring
    "quick": dict(epochs=1, iterations=4, val_iterations=1, cases=24, mirroring=False),
    "default": dict(epochs=20, iterations=50, val_iterations=1, cases=100, mirroring=False),
    # GPU: ~5,000 steps per arm (nnU-Net's own default is 250,000); an estimate, not yet measured: a few minutes
    # per arm on an H100; train the arms in separate calls with one --base_dir if a call has a time limit
    "full": dict(epochs=50, iterations=100, val_iterations=10, cases=None, mirroring=True),
}
# CPU sizes: nnU-Net's plain plans with features capped at 16 and batch 2, patch as planned (hippocampus:
# 40x56x40, about one tile per case; a smaller --patch tiles the cases, which is what makes head aggregation
# rules differ, at ~8x the prediction cost). --full keeps the plans as nnU-Net made them.
SHRINK = {"3d": dict(max_features=16, batch_size=2, n_stages=4),
          "2d": dict(max_features=32, batch_size=4, n_stages=5)}
SYNTHETIC_CASES = {"synthetic2d": 60, "synthetic3d": 45}
HIPPOCAMPUS_LABELS = {"background": 0, "anterior": 1, "posterior": 2}


# ------------------------------------------------------------------------------------------ dataset
def subset_layout(data: str, n: int, seed: int, work: str) -> str:
    """A generic layout with ``n`` of the cases (links), stratified by the first column of labels.csv."""
    import csv
    with open(os.path.join(data, "labels.csv")) as f:
        rows = list(csv.DictReader(f))
    column = [k for k in rows[0] if k != "case_id"][0]
    rng = np.random.default_rng(seed)
    groups = {}
    for r in rows:
        groups.setdefault(r[column], []).append(r)
    chosen = []
    for g in sorted(groups):
        k = max(2, int(round(n * len(groups[g]) / len(rows))))
        chosen += [groups[g][i] for i in sorted(rng.permutation(len(groups[g]))[:k])]
    chosen_ids = {r["case_id"] for r in chosen}
    for sub in ("images", "masks"):
        os.makedirs(os.path.join(work, sub), exist_ok=True)
        for name in os.listdir(os.path.join(data, sub)):
            if name.split(".")[0] in chosen_ids and not os.path.exists(os.path.join(work, sub, name)):
                os.symlink(os.path.abspath(os.path.join(data, sub, name)), os.path.join(work, sub, name))
    with open(os.path.join(work, "labels.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(sorted(chosen, key=lambda r: r["case_id"]))
    return work


def prepare(args, size: dict, base: str) -> dict:
    """Convert (or synthesise), plan, preprocess and split; reused when the stored settings match."""
    from nnunet_mtl.planning import plan_and_preprocess, use_base_dir
    from split_tools.splits import make_splits, write_splits
    paths = use_base_dir(base)
    dataset_id = DATASETS[args.dataset]
    kind = "2d" if args.dataset == "synthetic2d" else "3d"
    configuration = "2d" if kind == "2d" else "3d_fullres"
    shrink = None if args.full else dict(SHRINK[kind])
    if args.patch:
        shrink = {**(shrink or {}), "patch_size": tuple(args.patch)}
    settings = {"dataset": args.dataset, "data": os.path.abspath(args.data), "cases": size["cases"], "seed": args.seed,
                "shrink": shrink, "test_fraction": args.test_fraction}
    marker = os.path.join(base, "accuracy_setup.json")
    stored = stored_setup(marker, settings)
    if stored is not None:
        print(f"[setup] reusing {base}", flush=True)
        return stored
    start = time.perf_counter()
    if args.dataset == "hippocampus":
        from nnunet_mtl.conversion.detect import convert
        if not os.path.isdir(args.data):
            raise SystemExit(f"{args.data}: hippocampus data not found (give --data)")
        data = args.data
        if size["cases"]:
            data = subset_layout(args.data, size["cases"], args.seed, os.path.join(base, "subset"))
        raw = convert(data, paths["nnUNet_raw"], dataset_id, "Hippocampus", labels=HIPPOCAMPUS_LABELS)
    else:
        from nnunet_mtl.synthetic import write_synthetic_raw
        n = size["cases"] or SYNTHETIC_CASES[args.dataset]
        extra = {"extra_targets": True} if kind == "2d" else {}
        raw = write_synthetic_raw(paths["nnUNet_raw"], dataset_id, kind, n=n, seed=args.seed, **extra)
    plans = plan_and_preprocess(dataset_id, "plain", (configuration,), num_processes=args.num_processes,
                                shrink=shrink)
    pre = os.path.join(paths["nnUNet_preprocessed"], os.path.basename(raw))
    splits = make_splits(os.path.join(pre, "dataset.json"), mode="stratified", n_folds=5, seed=args.seed,
                         test_fraction=args.test_fraction)
    train = sorted(splits[0]["train"] + splits[0]["val"])
    # nnU-Net needs a validation list for its per-epoch pseudo-Dice: a fifth of the training cases (also trained
    # on). No test case is seen in training; checkpoint_final is scored, so this list selects nothing.
    fold = {"train": train, "val": sorted(splits[0]["val"])}
    write_splits([fold], pre, overwrite=True)
    stored = {"settings": settings, "dataset_id": dataset_id, "name": os.path.basename(raw), "raw": raw,
              "preprocessed": pre, "plans": plans, "configuration": configuration, "train": train,
              "test": sorted(splits.test), "seconds": time.perf_counter() - start}
    with open(marker, "w") as f:
        json.dump(stored, f, indent=1)
    return stored


def describe_plans(setup: dict) -> str:
    with open(os.path.join(setup["preprocessed"], setup["plans"] + ".json")) as f:
        conf = json.load(f)["configurations"][setup["configuration"]]
    arch = conf["architecture"]["arch_kwargs"]
    return (f"{setup['name']} {setup['plans']} {setup['configuration']}: patch {conf['patch_size']}, batch "
            f"{conf['batch_size']}, features {arch['features_per_stage']}, "
            f"{conf['architecture']['network_class_name'].split('.')[-1]}")


def data_folder(setup: dict) -> str:
    with open(os.path.join(setup["preprocessed"], setup["plans"] + ".json")) as f:
        ident = json.load(f)["configurations"][setup["configuration"]]["data_identifier"]
    return os.path.join(setup["preprocessed"], ident)


# --------------------------------------------------------------------------------------------- arms
def arm_problem(arm: Arm) -> str:
    return trainer_problem(arm.trainer) or (knobs_problem(arm.knobs) if arm.knobs else None) or ""


def seed_everything(seed: int) -> None:
    import torch
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train_arm(arm: Arm, setup: dict, base: str, budget: dict, device: str, seed: int) -> dict:
    """Train (or reuse) one arm in its own nnUNet_results tree; returns {'folder', 'train_s'}."""
    from nnunet_mtl.planning import use_base_dir
    results = os.path.join(base, "results", arm.name)
    use_base_dir(base, results=results)
    folder = os.path.join(results, setup["name"], f"{arm.trainer}__{setup['plans']}__{setup['configuration']}")
    record = {"trainer": arm.trainer, "knobs": arm.knobs, "budget": budget, "seed": seed}
    marker = os.path.join(results, "arm.json")
    if os.path.isfile(os.path.join(folder, "fold_0", "checkpoint_final.pth")) and os.path.isfile(marker):
        with open(marker) as f:
            stored = json.load(f)
        if stored["record"] == record:
            print(f"[{arm.name}] reusing {folder}", flush=True)
            return {"folder": folder, "train_s": stored["train_s"]}
    seed_everything(seed)
    knobs = dict(arm.knobs)
    if arm.trainer.startswith("nnUNetTrainerMTL"):  # the phase schedule scaled to the budget, no early stop
        epochs = budget["num_epochs"]
        knobs = {"warmup_epochs": max(1, epochs // 5), "ramp_epochs": max(1, epochs // 4),
                 "early_stopping_patience": epochs + 1, **knobs}
    seconds = train_in_process(setup["dataset_id"], setup["configuration"], setup["plans"], arm.trainer, 0, budget,
                               knobs, device)
    with open(marker, "w") as f:
        json.dump({"record": record, "train_s": seconds}, f, indent=1)
    return {"folder": folder, "train_s": seconds}


# ---------------------------------------------------------------------------------------- predicting
def is_mtl_model(folder: str) -> bool:
    with open(os.path.join(folder, "plans.json")) as f:
        return "mtl_targets" in json.load(f)


def mtl_predictor(folder: str, device: str, mirroring: bool, rule: str):
    """Our predictor with one aggregation rule (``NAME`` or ``NAME:key=value,...``, see ``parse_rule``)."""
    from nnunet_mtl.inference import load_predictor
    from nnunet_mtl.predictor import nnUNetPredictorMTL
    name, kwargs = parse_rule(rule)
    direct = {k: v for k, v in kwargs.items() if k in inspect.signature(load_predictor).parameters}
    predictor = load_predictor(folder, [0], "checkpoint_final.pth", device, use_mirroring=mirroring,
                               aggregation=name, **direct)
    for k, v in kwargs.items():  # parameters only the predictor's constructor knows: set as attributes
        if k not in direct and k in inspect.signature(nnUNetPredictorMTL).parameters:
            setattr(predictor, k, v)
    return predictor


def predict_arm(folder: str, setup: dict, device: str, mirroring: bool, aggregation: str) -> dict:
    """Whole test cases through nnU-Net's predictor (ours for multi-task models): masks in the original
    image space and, for multi-task models, the case's head outputs."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    start = time.perf_counter()
    if is_mtl_model(folder):
        predictor = mtl_predictor(folder, device, mirroring, aggregation)
    else:
        from nnunet_mtl.planning import add_trainer_path
        add_trainer_path()
        dev = torch.device(device)
        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                    perform_everything_on_device=dev.type == "cuda", device=dev, verbose=False,
                                    verbose_preprocessing=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(folder, [0], "checkpoint_final.pth")
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    reader = predictor.plans_manager.image_reader_writer_class()
    preprocessor = predictor.configuration_manager.preprocessor_class(verbose=False)
    masks, heads = {}, {}
    for case in setup["test"]:
        img, props = reader.read_images([os.path.join(setup["raw"], "imagesTr", f"{case}_0000{file_ending(setup)}")])
        if not hasattr(predictor, "predict_case"):  # stock nnU-Net
            masks[case] = predictor.predict_single_npy_array(img, props, None, None, False)
            continue
        data, _, props = preprocessor.run_case_npy(img, None, props, predictor.plans_manager,
                                                   predictor.configuration_manager, predictor.dataset_json)
        logits, case_heads = predictor.predict_case(torch.from_numpy(data), case)
        masks[case] = convert_predicted_logits_to_segmentation_with_correct_shape(
            logits.cpu(), predictor.plans_manager, predictor.configuration_manager, predictor.label_manager, props)
        heads[case] = case_heads.outputs
    return {"masks": masks, "heads": heads, "predict_s": time.perf_counter() - start}


def file_ending(setup: dict) -> str:
    with open(os.path.join(setup["raw"], "dataset.json")) as f:
        return json.load(f)["file_ending"]


def parse_rule(text: str):
    """'foreground_weighted' or 'NAME:key=value,...' -> (name, {key: float})."""
    name, _, rest = text.partition(":")
    kwargs = {}
    for part in filter(None, rest.split(",")):
        k, _, v = part.partition("=")
        kwargs[k.strip()] = float(v)
    return name.strip(), kwargs


def rule_problem(rule: str) -> str:
    from nnunet_mtl.inference import load_predictor
    from nnunet_mtl.case_aggregation import AGGREGATIONS
    from nnunet_mtl.predictor import nnUNetPredictorMTL
    name, kwargs = parse_rule(rule)
    if name not in AGGREGATIONS:
        return f"aggregation {name!r} unknown in this checkout (known: {list(AGGREGATIONS)})"
    known = set(inspect.signature(load_predictor).parameters) | set(inspect.signature(nnUNetPredictorMTL).parameters)
    unknown = sorted(set(kwargs) - known)
    return f"aggregation parameter(s) {unknown} unknown in this checkout" if unknown else ""


def heads_under_rule(folder: str, setup: dict, device: str, mirroring: bool, rule: str, known=None) -> dict:
    """Head outputs of the test cases under one aggregation rule: one more sliding window per case, on
    the preprocessed cases, no export; ``known`` (outputs already predicted under this rule) skips it."""
    import torch
    from nnunet_mtl.frozen.extract import preprocessed_cases
    predictor = mtl_predictor(folder, device, mirroring, rule)
    out, tiles = {}, []
    for src in preprocessed_cases(data_folder(setup), setup["test"]):
        data = src.load(predictor)
        tiles.append(n_tiles(data.shape[1:], predictor.configuration_manager.patch_size, predictor.tile_step_size))
        out[src.case_id] = (known[src.case_id] if known is not None else
                            predictor.predict_case(torch.from_numpy(np.ascontiguousarray(data)), src.case_id)[1].outputs)
    return {"heads": out, "tiles_per_case": float(np.mean(tiles))}


def n_tiles(shape, patch, step: float) -> int:
    """Sliding-window tiles of one case (a 2D patch over a 3D array runs slice by slice, as nnU-Net does)."""
    from nnunetv2.inference.sliding_window_prediction import compute_steps_for_sliding_window
    shape, patch = list(shape), list(patch)
    slices = int(np.prod(shape[:len(shape) - len(patch)]))
    return slices * int(np.prod([len(s) for s in compute_steps_for_sliding_window(shape[-len(patch):], patch, step)]))


# ------------------------------------------------------------------------------------------- scoring
def structures(setup: dict) -> dict:
    with open(os.path.join(setup["raw"], "dataset.json")) as f:
        labels = json.load(f)["labels"]
    return {k: v for k, v in labels.items() if k != "background" and isinstance(v, int)}


def dice_scores(masks: dict, setup: dict) -> dict:
    from nnunet_mtl.metrics import dice
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    reader = SimpleITKIO()
    per = {s: [] for s in structures(setup)}
    for case, pred in masks.items():
        gt, _ = reader.read_seg(os.path.join(setup["raw"], "labelsTr", case + file_ending(setup)))
        gt = gt[0]
        for s, v in structures(setup).items():
            per[s].append(dice(pred == v, gt == v))
    return {s: float(np.mean(v)) for s, v in per.items()}


def head_scores(outputs: dict, table, cases, n_bootstrap: int = 1000, seed: int = 0) -> dict:
    """Per target: macro-F1, balanced accuracy, ROC AUC (classification) or MAE, Pearson r (regression),
    with bootstrap 95 % CIs for AUC and r."""
    from nnunet_mtl.metrics import binary_auc, bootstrap_ci, classification_metrics, regression_metrics
    out = {}
    for t in table.spec:
        ids = [c for c in cases if table.value(c, t.name) is not None]
        if t.is_classification:
            y = np.array([t.classes.index(table.value(c, t.name)) for c in ids])
            probs = np.stack([np.asarray(outputs[c][t.name], dtype=np.float64).reshape(-1) for c in ids])
            m = classification_metrics(y, probs.argmax(1), probs, t.classes)
            entry = {k: m[k] for k in ("macro_f1", "balanced_accuracy", "roc_auc", "accuracy")}
            if len(t.classes) == 2:
                entry["roc_auc_ci"] = bootstrap_ci(lambda a, b: binary_auc(a == 1, b), [y, probs[:, 1]],
                                                   n=n_bootstrap, seed=seed)
        else:
            y = np.array([table.value(c, t.name) for c in ids], dtype=np.float64)
            yhat = np.array([float(np.asarray(outputs[c][t.name]).reshape(-1)[0]) for c in ids])
            m = regression_metrics(y, yhat)
            entry = {"mae": m["mae"], "pearson_r": m["pearson_r"],
                     "pearson_r_ci": bootstrap_ci(lambda a, b: regression_metrics(a, b)["pearson_r"], [y, yhat],
                                                  n=n_bootstrap, seed=seed)}
        out[t.name] = entry
    return out


def trivial_outputs(table, train, test) -> dict:
    """Majority class (probabilities = training class frequencies) / training mean, for every test case."""
    outs = {}
    for t in table.spec:
        if t.is_classification:
            counts = np.array(table.class_counts(t.name, train), dtype=np.float64)
            value = counts / counts.sum()
        else:
            value = np.array([np.mean([table.value(c, t.name) for c in train if table.value(c, t.name) is not None])])
        for c in test:
            outs.setdefault(c, {})[t.name] = value
    return outs


# ------------------------------------------------------------------------------------------- report
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


def summary_pairs(results: dict, spec) -> list:
    cls = next((t.name for t in spec if t.is_classification), None)
    reg = next((t.name for t in spec if not t.is_classification), None)
    rows = {r["arm"]: r for r in results["rows"]}
    pairs = [("dataset", results["dataset"]), ("n_train", len(results["train"])), ("n_test", len(results["test"])),
             ("epochs", results["budget"]["num_epochs"]), ("iterations", results["budget"]["num_iterations_per_epoch"]),
             ("mirroring", results["mirroring"])]
    mtl = rows.get(DEFAULT_MTL, {})
    pairs.append(("dice_ratio_min", fmt(mtl.get("dice_ratio_min"), 4)))
    for s, v in rows.get(REFERENCE, {}).get("dice", {}).items():
        pairs.append((f"dice_{s}_stock", fmt(v, 4)))
    for s, v in mtl.get("dice", {}).items():
        pairs.append((f"dice_{s}_mtl", fmt(v, 4)))
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
    for rule, h in results.get("aggregation", {}).items():
        if cls and cls in h.get("heads", {}):
            pairs.append((f"auc_mtl_{rule.replace(':', '_').replace('=', '')}", fmt(h["heads"][cls]["roc_auc"])))
    pairs.append(("skipped", ",".join(results["skipped"]) or "none"))
    pairs.append(("total_s", fmt(results["total_s"], 0)))
    return pairs


# --------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    here = os.path.dirname(os.path.abspath(__file__))
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="hippocampus", choices=sorted(DATASETS))
    p.add_argument("--data", default=os.path.normpath(os.path.join(here, "..", "..", "shared", "data", "hippocampus")),
                   help="hippocampus generic layout (images/, masks/, labels.csv); default ../shared/data/hippocampus "
                        "relative to the repository root")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="smoke run: few cases, a few iterations (minutes)")
    size.add_argument("--full", action="store_true", help="GPU: planned network, real budget, test-time mirroring")
    p.add_argument("--epochs", type=int, default=None, help="override the size's epochs (every arm)")
    p.add_argument("--iterations", type=int, default=None, help="override the size's iterations per epoch")
    p.add_argument("--cases", type=int, default=None, help="use a stratified subset of this many cases")
    p.add_argument("--test_fraction", type=float, default=0.3)
    p.add_argument("--patch", type=int, nargs="+", default=None, help="patch size for every arm (default: the "
                                                                      "CPU size's, or nnU-Net's plan with --full)")
    p.add_argument("--arms", nargs="+", default=None, help=f"subset of {[a.name for a in ARMS]}")
    p.add_argument("--aggregation", nargs="+", default=["foreground_weighted", "mean"],
                   help="case aggregation rules for the default MTL arm's heads, NAME or NAME:key=value,... "
                        "(the first is the one used in the main table)")
    p.add_argument("--no_probe", action="store_true", help="skip the frozen-encoder probe baseline")
    p.add_argument("--base_dir", default=None, help="work folder; prepared data and trained arms with the same "
                                                    "settings are reused (default: a new temporary folder)")
    p.add_argument("--out", default=None, help="folder for accuracy.json (default: BASE_DIR/accuracy_results)")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--num_processes", type=int, default=2)
    return p


def main():
    args = build_parser().parse_args()
    import torch
    t0 = time.perf_counter()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    set_runtime_env(device)
    size_name = "quick" if args.quick else "full" if args.full else "default"
    size = dict(SIZES[size_name])
    for k in ("epochs", "iterations", "cases"):
        if getattr(args, k) is not None:
            size[k] = getattr(args, k)
    budget = {"num_epochs": size["epochs"], "num_iterations_per_epoch": size["iterations"],
              "num_val_iterations_per_epoch": size["val_iterations"]}
    base = os.path.abspath(args.base_dir or tempfile.mkdtemp(prefix="mtl_accuracy_"))
    out_dir = os.path.abspath(args.out or os.path.join(base, "accuracy_results"))
    print("\n".join(machine_lines(device)))
    print(f"size: {size_name}; budget per arm: {budget['num_epochs']} epochs x {budget['num_iterations_per_epoch']} "
          f"iterations (+{budget['num_val_iterations_per_epoch']} validation iterations per epoch); test-time "
          f"mirroring {'on' if size['mirroring'] else 'off (CPU size: 8x cheaper in 3D; --full turns it on)'}; "
          f"seed {args.seed}; base dir {base}", flush=True)

    setup = prepare(args, size, base)
    print(f"[setup] {describe_plans(setup)}; {len(setup['train'])} train / {len(setup['test'])} test cases", flush=True)
    from nnunet_mtl.dataset_spec import DatasetSpec
    spec_all = DatasetSpec.from_file(os.path.join(setup["raw"], "dataset.json"))
    table, spec = spec_all.table, spec_all.targets
    struct_names = list(structures(setup))

    wanted = [a for a in ARMS if args.arms is None or a.name in args.arms]
    unknown = sorted(set(args.arms or []) - {a.name for a in ARMS})
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; known: {[a.name for a in ARMS]}")
    results = {"dataset": args.dataset, "size": size_name, "budget": budget, "mirroring": size["mirroring"],
               "machine": machine_lines(device), "plans": describe_plans(setup), "train": setup["train"],
               "test": setup["test"], "rows": [], "skipped": [], "aggregation": {}}
    rows = [{"arm": "trivial", "trainer": "majority class / training mean",
             "heads": head_scores(trivial_outputs(table, setup["train"], setup["test"]), table, setup["test"])}]
    problem = rule_problem(args.aggregation[0])
    if problem:
        raise SystemExit(f"--aggregation {args.aggregation[0]}: {problem} (the first rule is used for every arm)")
    folders, main_heads = run_arms(wanted, setup, base, budget, device, size["mirroring"], args, table, rows,
                                   results["skipped"])
    if REFERENCE in folders and not args.no_probe:
        rows.insert(1, run_probe(folders[REFERENCE], setup, base, device, table, args.seed))
    elif not args.no_probe:
        print("[probe] skipped: needs the stock arm", flush=True)
    if DEFAULT_MTL in folders:
        results["aggregation"] = compare_aggregation(folders[DEFAULT_MTL], setup, device, size["mirroring"],
                                                     args.aggregation, main_heads, table)
    results["rows"] = rows
    results["total_s"] = time.perf_counter() - t0
    results["load_average_end"] = load_average()

    print()
    print(f"Held-out test cases: {len(setup['test'])} (whole cases), training cases: {len(setup['train'])}; "
          f"{describe_plans(setup)}")
    print("\n".join(table_lines(rows, spec, struct_names)))
    if results["aggregation"]:
        print(f"\nHead case-aggregation rules, arm '{DEFAULT_MTL}' (mean tiles per case: "
              f"{next(iter(results['aggregation'].values()))['tiles_per_case']:.1f}; with one tile per case every "
              f"rule gives the same result):")
        print("\n".join(table_lines([{"arm": f"{DEFAULT_MTL} [{rule}]", "heads": a["heads"]}
                                     for rule, a in results["aggregation"].items()], spec, [], runs=False)))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "accuracy.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    print(f"\nload average at the end (1/5/15 min): {results['load_average_end']}")
    print(f"results: {os.path.join(out_dir, 'accuracy.json')}")
    print("summary: " + " ".join(f"{k}={v}" for k, v in summary_pairs(results, spec)))


def run_arms(wanted, setup, base, budget, device, mirroring, args, table, rows, skipped):
    """Train (or reuse), predict and score each arm; appends to ``rows``/``skipped``; returns the model
    folders by arm and the default MTL arm's head outputs (under the first aggregation rule)."""
    folders, main_heads = {}, {}
    for arm in wanted:
        problem = arm_problem(arm)
        if problem:
            print(f"[{arm.name}] skipped: {problem}", flush=True)
            skipped.append(arm.name)
            continue
        print(f"[{arm.name}] {arm.trainer} {arm.knobs or ''}: {arm.note}", flush=True)
        trained = train_arm(arm, setup, base, budget, device, args.seed)
        folders[arm.name] = trained["folder"]
        pred = predict_arm(trained["folder"], setup, device, mirroring, args.aggregation[0])
        if arm.name == DEFAULT_MTL:
            main_heads = pred["heads"]
        row = {"arm": arm.name, "trainer": arm.trainer, "knobs": arm.knobs, "train_s": trained["train_s"],
               "predict_s": pred["predict_s"], "wall_s": trained["train_s"] + pred["predict_s"],
               "dice": dice_scores(pred["masks"], setup)}
        if pred["heads"]:
            row["heads"] = head_scores(pred["heads"], table, setup["test"])
        rows.append(row)
        print(f"[{arm.name}] train {row['train_s']:.0f} s, predict {row['predict_s']:.0f} s; Dice "
              + ", ".join(f"{s} {v:.3f}" for s, v in row["dice"].items()), flush=True)
    ref = next((r for r in rows if r["arm"] == REFERENCE), None)
    for r in rows:
        if ref is not None and "dice" in r:
            r["dice_ratio"] = {s: r["dice"][s] / ref["dice"][s] if ref["dice"][s] > 0 else float("nan")
                               for s in r["dice"]}
            finite = [v for v in r["dice_ratio"].values() if np.isfinite(v)]
            r["dice_ratio_min"] = float(min(finite)) if finite else float("nan")
    return folders, main_heads


def compare_aggregation(folder, setup, device, mirroring, rules, main_heads, table) -> dict:
    """The default MTL arm's head scores under each aggregation rule (unknown rules skipped, printed)."""
    out = {}
    for rule in rules:
        problem = rule_problem(rule)
        if problem:
            print(f"[aggregation] {rule} skipped: {problem}", flush=True)
            continue
        start = time.perf_counter()
        agg = heads_under_rule(folder, setup, device, mirroring, rule, known=main_heads if rule == rules[0] else None)
        out[rule] = {"heads": head_scores(agg["heads"], table, setup["test"]), "tiles_per_case": agg["tiles_per_case"],
                     "seconds": time.perf_counter() - start}
    return out


def run_probe(stock_folder: str, setup: dict, base: str, device: str, table, seed: int) -> dict:
    """The frozen-encoder probe on the stock model: features of every case (cached), fitted on the
    training split, scored on the test split."""
    from nnunet_mtl.frozen.extract import preprocessed_cases
    from nnunet_mtl.frozen.probe import FrozenEncoderProbe
    start = time.perf_counter()
    probe = FrozenEncoderProbe(stock_folder, cache_dir=os.path.join(base, "probe_cache"), device=device,
                               table=table, spec=table.spec, seed=seed)
    folder = data_folder(setup)
    probe.fit(preprocessed_cases(folder, setup["train"]))
    outputs = probe.predict(preprocessed_cases(folder, setup["test"]))
    seconds = time.perf_counter() - start
    stats = probe.extractor.stats
    print(f"[probe] {seconds:.0f} s: features of {stats['computed']} cases computed ({stats['forwards']} forwards), "
          f"{stats['cached']} from the cache; regularisation chosen by CV: "
          + ", ".join(f"{k} {v:.3g}" for k, v in probe.probe.chosen.items()), flush=True)
    return {"arm": "probe", "trainer": "stock features + linear", "train_s": seconds, "wall_s": seconds,
            "heads": head_scores(outputs, table, setup["test"]), "probe_regularisation": probe.probe.chosen,
            "feature_stats": stats}


if __name__ == "__main__":
    main()
