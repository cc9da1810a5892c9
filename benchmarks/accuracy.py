"""Accuracy benchmark: multi-task heads vs stock nnU-Net vs heads fitted on pooled features, on whole held-out cases.

One run, one dataset (default: the real hippocampus MRI crops in ../shared/data/hippocampus),
one split (70 % train / 30 % held-out test, stratified by the first classification target, by case),
the same plans and the same training budget for every arm:

* arms (table ``ARMS``): stock ``nnUNetTrainer`` (segmentation only), ``mtl`` (the library default
  trainer from scratch), ``finetune`` (the same trainer started from the trained stock arm with
  ``init_from``; its cost is the stock training plus its own) and variants added by name (``adamw``,
  ``multiscale``, ``mask_pooling``, ``balanced``); an arm whose trainer or knob this checkout does not
  know is skipped with a printed line;
* baselines: ``trivial`` (majority class / training mean) and fitted heads (``FITTED``): logistic
  regression / ridge on the pooled whole-case encoder features (``nnunet_mtl.training.fitting``, fitted on the
  training split only) of the stock model (``fitted``: the frozen path, nnunet_mtl_add_heads) and of the
  ``mtl`` model (``fitted_mtl``: the pipeline's default output);
* scores on the test cases: Dice per structure (and each arm's ratio to stock), macro-F1, balanced
  accuracy and ROC AUC per classification target, MAE and Pearson r per regression target;
* wall time per path (training; fitted heads' feature extraction + fitting), and the frozen path's time over
  the from-scratch MTL training (``frozen_vs_scratch_time``);

Without ``--arms`` the run is ``DEFAULT_RUN`` (stock, mtl, joint, fitted, fitted_mtl).
Sizes: default (2-core CPU, 3 arms + fitted heads: 18-50 min, the step time of this shared VM varied 4x between days;
shrunk plans, short budget, no test-time mirroring),
``--quick`` (a smoke run of a few minutes on a subset), ``--full`` (a GPU: planned network,
real budget, mirroring on). The last line is ``summary: key=value ...``; results also go to
``--out``/accuracy.json. The printed report is ``accuracy_report.py``.
"""
from __future__ import annotations

import argparse
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
from accuracy_report import (DEFAULT_MTL, REFERENCE, fmt, frozen_vs_scratch, summary_pairs,  # noqa: E402,F401
                             table_lines, time_lines)


@dataclass(frozen=True)
class Arm:
    name: str
    trainer: str
    knobs: dict = field(default_factory=dict)
    note: str = ""
    starts_from: str = ""   # an arm whose trained checkpoint this one starts from (``init_from``)


# The arms, in order. "stock" is the reference for Dice ratios and the "fitted" arm's model; "mtl" is the
# library's default multi-task trainer (summary keys).
ARMS = (
    Arm("stock", "nnUNetTrainer", {}, "nnU-Net as is: SGD lr 1e-2, segmentation only"),
    Arm("mtl", "nnUNetTrainerMTL", {}, "the library default, from scratch: nnU-Net's SGD lr 1e-2 for the U-Net, "
        "heads on the bottleneck at lr 1e-3 learning on its features without training the encoder"),
    Arm("joint", "nnUNetTrainerMTL", {"heads_train_encoder": True}, "the heads' gradient trains the encoder too "
        "(the default until 2026-12-03; losses mixed by the schedule)"),
    # Fine-tuning from the trained stock arm: the segmentation is already trained, so no segmentation-first
    # warm-up (heads at their full loss weight from the start); the first quarter of the epochs trains the heads
    # alone (encoder/decoder frozen). Same step budget as the others, on top of the stock arm's training.
    Arm("finetune", "nnUNetTrainerMTL", {"warmup_epochs": 0, "ramp_epochs": 1, "heads_train_encoder": True},
        "joint fine-tuning from the stock arm's checkpoint (init_from; the heads' gradient reaches the encoder), "
        "heads only for the first quarter of the epochs; its cost is the stock training plus this one",
        starts_from="stock"),
    Arm("adamw", "nnUNetTrainerMTL", {"optimizer_name": "adamw"}, "the seed design: AdamW lr 1e-4 for all"),
    Arm("multiscale", "nnUNetTrainerMTLMultiScale", {}, "heads on encoder stages 0, 1, 2 and the bottleneck"),
    Arm("mask_pooling", "nnUNetTrainerMTLMaskPooling", {}, "heads pool features weighted by the predicted mask"),
    Arm("balanced", "nnUNetTrainerMTLBalancedSampling", {}, "class-balanced case sampling"),
)
# Heads fitted in closed form (nnunet_mtl.training.fitting): name -> the trained arm whose encoder they read.
FITTED = {"fitted": "stock", "fitted_mtl": "mtl"}
DEFAULT_RUN = ("stock", "mtl", "joint", "fitted", "fitted_mtl")  # without --arms; the others by name

DATASETS = {"hippocampus": 960, "synthetic3d": 961, "synthetic2d": 962}
SIZES = {  # epochs x iterations per epoch, validation iterations, cases (None: all), test-time mirroring
    "quick": dict(epochs=1, iterations=4, val_iterations=1, cases=24, mirroring=False),
    "default": dict(epochs=20, iterations=50, val_iterations=1, cases=100, mirroring=False),
    # GPU: ~5,000 steps per arm (nnU-Net's own default is 250,000); an estimate, not yet measured: a few minutes
    # per arm on an H100; train the arms in separate calls with one --base_dir if a call has a time limit
    "full": dict(epochs=50, iterations=100, val_iterations=10, cases=None, mirroring=True),
}
# CPU sizes: nnU-Net's plain plans with features capped at 16 and batch 2, patch as planned (hippocampus:
# 40x56x40, about one tile per case; a smaller --patch tiles the cases, whose heads then read the pools of all
# their tiles, at ~8x the prediction cost). --full keeps the plans as nnU-Net made them.
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


def select(names) -> tuple:
    """(training arms, fitted-heads arms) for ``--arms`` (None: the default run), in table order; an arm another
    one starts from or fitted heads read is added (printed); an unknown name is an error."""
    known = [a.name for a in ARMS] + list(FITTED)
    names = list(DEFAULT_RUN if names is None else names)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise SystemExit(f"unknown arm(s) {unknown}; known: {known}")
    needed = set(names)
    for n in names:
        dep = FITTED.get(n) or next((a.starts_from for a in ARMS if a.name == n), "")
        if dep and dep not in needed:
            print(f"[{n}] needs the {dep} arm: added", flush=True)
            needed.add(dep)
    return [a for a in ARMS if a.name in needed], [p for p in FITTED if p in needed]


def arm_knobs(arm: Arm, budget: dict, folders: dict) -> dict:
    """The knobs an arm trains with: our trainers' phase schedule scaled to the budget (no early stop), the
    arm's own knobs, and for an arm that starts from another the ``init_from`` / ``heads_only_epochs`` knobs."""
    knobs = dict(arm.knobs)
    if arm.trainer.startswith("nnUNetTrainerMTL"):
        epochs = budget["num_epochs"]
        knobs = {"warmup_epochs": max(1, epochs // 5), "ramp_epochs": max(1, epochs // 4),
                 "early_stopping_patience": epochs + 1, **knobs}
        if arm.starts_from:
            knobs = {"init_from": folders[arm.starts_from], "heads_only_epochs": max(1, epochs // 4), **knobs}
    return knobs


def train_arm(arm: Arm, setup: dict, base: str, budget: dict, device: str, seed: int, folders=None) -> dict:
    """Train (or reuse) one arm in its own nnUNet_results tree; returns {'folder', 'train_s'}."""
    from nnunet_mtl.planning import use_base_dir
    results = os.path.join(base, "results", arm.name)
    use_base_dir(base, results=results)
    folder = os.path.join(results, setup["name"], f"{arm.trainer}__{setup['plans']}__{setup['configuration']}")
    knobs = arm_knobs(arm, budget, folders or {})
    record = {"trainer": arm.trainer, "knobs": knobs, "budget": budget, "seed": seed}
    if arm.starts_from:  # a retrained starting model invalidates this arm
        ckpt = os.path.join(folders[arm.starts_from], "fold_0", "checkpoint_final.pth")
        record["starts_from_mtime"] = os.path.getmtime(ckpt)
    marker = os.path.join(results, "arm.json")
    if os.path.isfile(os.path.join(folder, "fold_0", "checkpoint_final.pth")) and os.path.isfile(marker):
        with open(marker) as f:
            stored = json.load(f)
        if stored["record"] == record:
            print(f"[{arm.name}] reusing {folder}", flush=True)
            return {"folder": folder, "train_s": stored["train_s"], "knobs": knobs}
    seed_everything(seed)
    seconds = train_in_process(setup["dataset_id"], setup["configuration"], setup["plans"], arm.trainer, 0, budget,
                               knobs, device)
    with open(marker, "w") as f:
        json.dump({"record": record, "train_s": seconds}, f, indent=1)
    return {"folder": folder, "train_s": seconds, "knobs": knobs}


# ---------------------------------------------------------------------------------------- predicting
def is_mtl_model(folder: str) -> bool:
    with open(os.path.join(folder, "plans.json")) as f:
        return "mtl_targets" in json.load(f)


def mtl_predictor(folder: str, device: str, mirroring: bool):
    """Our engine for a multi-task model folder (torch: the arms compare models, not backends)."""
    from nnunet_mtl.inference.loader import load_predictor
    return load_predictor(folder, [0], "checkpoint_final.pth", device, use_mirroring=mirroring, backend="torch")


def predict_arm(folder: str, setup: dict, device: str, mirroring: bool) -> dict:
    """Whole test cases through nnU-Net's predictor (ours for multi-task models): masks in the original
    image space and, for multi-task models, the case's head outputs."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    start = time.perf_counter()
    if is_mtl_model(folder):
        predictor = mtl_predictor(folder, device, mirroring)
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


# ------------------------------------------------------------------------------------------- scoring
def structures(setup: dict) -> dict:
    with open(os.path.join(setup["raw"], "dataset.json")) as f:
        labels = json.load(f)["labels"]
    return {k: v for k, v in labels.items() if k != "background" and isinstance(v, int)}


def dice_scores(masks: dict, setup: dict) -> dict:
    from nnunet_mtl.evaluation.metrics import dice
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
    from nnunet_mtl.evaluation.metrics import binary_auc, bootstrap_ci, classification_metrics, regression_metrics
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
    p.add_argument("--arms", nargs="+", default=None,
                   help=f"arms to run, of {[a.name for a in ARMS] + list(FITTED)} (default: "
                        f"{' '.join(DEFAULT_RUN)}); an arm another needs is added")
    p.add_argument("--no_fitted", action="store_true", help="skip the fitted-heads arms")
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

    wanted, probes = select(args.arms)
    if args.no_fitted:
        probes = []
    results = {"dataset": args.dataset, "size": size_name, "budget": budget, "mirroring": size["mirroring"],
               "machine": machine_lines(device), "plans": describe_plans(setup), "train": setup["train"],
               "test": setup["test"], "rows": [], "skipped": []}
    rows = [{"arm": "trivial", "trainer": "majority class / training mean",
             "heads": head_scores(trivial_outputs(table, setup["train"], setup["test"]), table, setup["test"])}]
    folders = run_arms(wanted, setup, base, budget, device, size["mirroring"], args, table, rows,
                                   results["skipped"])
    for i, name in enumerate(probes):
        if FITTED[name] not in folders:
            print(f"[{name}] skipped: the {FITTED[name]} arm was not trained", flush=True)
            results["skipped"].append(name)
            continue
        rows.insert(1 + i, run_fitted(name, FITTED[name], folders[FITTED[name]], setup, base, device, table,
                                      args.seed))
    results["rows"] = rows
    results["total_s"] = time.perf_counter() - t0
    results["load_average_end"] = load_average()

    print()
    print(f"Held-out test cases: {len(setup['test'])} (whole cases), training cases: {len(setup['train'])}; "
          f"{describe_plans(setup)}")
    print("\n".join(table_lines(rows, spec, struct_names)))
    print(f"\nWall time per path to image-level outputs (own: this arm's training, or for fitted heads the feature "
          f"extraction + fitting + test prediction; frozen path / from-scratch {DEFAULT_MTL} = "
          f"{fmt(frozen_vs_scratch(rows))}):")
    print("\n".join(time_lines(rows)))
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "accuracy.json"), "w") as f:
        json.dump(results, f, indent=1, default=float)
    print(f"\nload average at the end (1/5/15 min): {results['load_average_end']}")
    print(f"results: {os.path.join(out_dir, 'accuracy.json')}")
    print("summary: " + " ".join(f"{k}={v}" for k, v in summary_pairs(results, spec)))


def run_arms(wanted, setup, base, budget, device, mirroring, args, table, rows, skipped):
    """Train (or reuse), predict and score each arm; appends to ``rows``/``skipped``; returns the model
    folders by arm."""
    folders = {}
    for arm in wanted:
        problem = arm_problem(arm)
        if problem:
            print(f"[{arm.name}] skipped: {problem}", flush=True)
            skipped.append(arm.name)
            continue
        print(f"[{arm.name}] {arm.trainer} {arm.knobs or ''}: {arm.note}", flush=True)
        trained = train_arm(arm, setup, base, budget, device, args.seed, folders)
        folders[arm.name] = trained["folder"]
        pred = predict_arm(trained["folder"], setup, device, mirroring)
        row = {"arm": arm.name, "trainer": arm.trainer, "knobs": trained["knobs"], "needs": arm.starts_from or None,
               "path": f"{arm.trainer} training" + (f", from the {arm.starts_from} model" if arm.starts_from else ""),
               "train_s": trained["train_s"],
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
    return folders


def run_fitted(name: str, source: str, model_folder: str, setup: dict, base: str, device: str, table,
               seed: int) -> dict:
    """Heads fitted in closed form on the trained ``source`` arm's pooled features (``training.fitting``: the
    pipeline's default and ``nnunet_mtl_add_heads``), on the benchmark's split (training cases -> fit, test cases
    -> its out-of-fold rows), written into a copy of that model; its seconds are the frozen path's cost on top
    of that model's training (features from an earlier run's cache are flagged: they make it look cheaper)."""
    from nnunet_mtl import prediction_table
    from nnunet_mtl.training.fitting import fit_heads
    split = os.path.join(base, "benchmark_split.json")
    with open(split, "w") as f:
        json.dump([{"train": setup["train"], "val": setup["test"]}], f)
    out = os.path.join(base, "fitted", name)
    cache = os.path.join(base, "fitted_cache")
    cached = os.path.isdir(cache) and any(os.scandir(cache))
    start = time.perf_counter()
    summary = fit_heads(model_folder, out, spec=table.spec, folds=[0], splits_file=split, device=device,
                        backend="torch", cache_dir=cache, seed=seed, overwrite=True,
                        report=lambda line: print(f"[{name}] {line}", flush=True))
    seconds = time.perf_counter() - start
    rows = prediction_table.read(os.path.join(out, "fold_0", "validation", "predictions.csv"), table.spec)
    outputs = {c: {t.name: (r["probs"][t.name] if t.is_classification else np.array([r[t.name]]))
                   for t in table.spec} for c, r in rows.items()}
    regularisation = summary["folds"]["0"].get("regularisation", {})
    print(f"[{name}] {seconds:.0f} s; regularisation chosen by CV: "
          + ", ".join(f"{k} {v:.3g}" for k, v in regularisation.items()), flush=True)
    return {"arm": name, "trainer": f"{source} features + fitted linear heads", "needs": source,
            "path": f"frozen: heads fitted on the {source} model's features", "train_s": seconds, "wall_s": seconds,
            "time_note": "pooled features read from an earlier run's cache" if cached else "",
            "heads": head_scores(outputs, table, setup["test"]), "regularisation": regularisation}


if __name__ == "__main__":
    main()
