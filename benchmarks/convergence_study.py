"""Convergence study (issue 29): the multi-task designs compared at a budget where stock nnU-Net has
plateaued, over several seeds, on hippocampus's targets and on a texture target the mask does not carry.

Data: the real hippocampus crops (``--data``, default ../shared/data/hippocampus) with a third target,
``texture`` (``appearance_target.py``: a subtle sinusoidal texture inside the structure for a seeded
half of the cases, masks unchanged). Split (by case, stratified by texture, seed 2026): 30 % test cases,
held out and only scored; of the rest 4/5 train, 1/5 validation (nnU-Net's per-epoch pseudo-Dice curve:
not trained on, not scored). Fitted read-outs are fitted on train + validation cases.

Configuration (CPU): nnU-Net's ``2d`` configuration of the plain plans (patch 56x40 as planned, 4 stages,
features capped at 32, batch 12 instead of the planned 281), 240 epochs x 25 iterations = 6,000 steps per arm:
on 2 cores the 3d configuration needs days to plateau (runs A-E: 1,000 steps, Dice 0.60 / 0.24); at one thread
a step of batch 12 costs 0.13 s against 0.37 s for batch 32, so the same minutes buy 2.8x the updates, and short
epochs give nnU-Net's per-epoch EMA pseudo-Dice (time constant 10 epochs) the resolution to show a plateau.
Every arm and seed together take about 90 minutes on 2 cores (``cpu_1250``: the morning's 1,250 steps of
batch 32, not converged).
``--full`` (a GPU) keeps the 3d_fullres plans as planned with nnU-Net's own batch and a longer budget.

Arms (``TRAINED``, each trained per seed in its own process, ``OMP_NUM_THREADS=1``, ``--workers`` at a time):
stock nnU-Net; ``joint_sgd`` (the heads' gradient trains the encoder, nnU-Net's SGD); ``seed_design``
(``--recipe seed``'s knobs with its schedule scaled to the budget). Heads trained on the stock model's
fixed features (``HEADS_ONLY``): ``heads_detached`` (global pool) and ``heads_mask_pooled``. Read-outs
(``READOUTS``, no training): ``fitted`` (the pipeline's default: linear heads fitted in closed form on the
global and foreground pools and the segmentation's own measurements: per-structure volume, mean and spread of
the intensity inside; each target reads the combination of these its CV on the training cases prefers),
``fitted_all`` (every target reads all three), ``fitted_pools`` (global + foreground, no measures: the default
until 2026-12-07), ``fitted_measures_only``, ``mask_volume`` (the predicted mask's volume itself).

Jobs resume: a finished training or evaluation (same settings) is kept. ``--report_only`` prints the
tables from what is there. Results: ``BASE/study/study.json``, ``study.md``, ``curves.png``.
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from accuracy import (Arm, arm_knobs, dice_scores, head_scores, predict_arm, seed_everything,  # noqa: E402
                      structures, trivial_outputs)
from common import load_average, machine_lines, set_runtime_env, stored_setup  # noqa: E402

DATASET_ID = 971
LABELS = {"background": 0, "anterior": 1, "posterior": 2}
SPLIT_SEED = 2026
SIZES = {  # epochs x iterations, validation iterations per epoch, batch, features cap, heads-only epochs
    "quick": dict(configuration="2d", epochs=2, iterations=5, val_iterations=2, batch=8, max_features=16,
                  heads_epochs=1, cases=40),
    # 6,000 steps of batch 12 (one thread: 0.13 s per step, batch 32 costs 0.37 s) so that nnU-Net's per-epoch
    # EMA pseudo-Dice (time constant 10 epochs = 250 steps) can show a plateau within the session's ~90 minutes
    "cpu": dict(configuration="2d", epochs=240, iterations=25, val_iterations=4, batch=12, max_features=32,
                heads_epochs=40, cases=None),
    # the study of 2026-12-07 morning (not converged: docs/results/convergence_study_2026-12-07.md)
    "cpu_1250": dict(configuration="2d", epochs=25, iterations=50, val_iterations=4, batch=32, max_features=32,
                     heads_epochs=10, cases=None),
    "full": dict(configuration="3d_fullres", epochs=250, iterations=250, val_iterations=50, batch=None,
                 max_features=None, heads_epochs=50, cases=None),
}
TRAINED = (
    Arm("stock", "nnUNetTrainer", {}, "nnU-Net as is"),
    Arm("joint_sgd", "nnUNetTrainerMTL", {"heads_train_encoder": True},
        "heads on the bottleneck, their gradient trains the encoder; nnU-Net's SGD lr 1e-2"),
    Arm("seed_design", "nnUNetTrainerMTL", {"recipe": "seed"},
        "--recipe seed: AdamW 1e-4, 90/10 then a ramp to 50/50, heads train the encoder"),
)
HEADS_ONLY = (
    Arm("heads_detached", "nnUNetTrainerMTL", {"heads_train_encoder": False},
        "heads trained by gradient on the stock model's fixed features (global pool)", starts_from="stock"),
    Arm("heads_mask_pooled", "nnUNetTrainerMTLMaskPooling", {"heads_train_encoder": False},
        "the same, pooled over the predicted mask", starts_from="stock"),
)
OVERRIDES = ("epochs", "iterations", "val_iterations", "batch")  # command-line overrides of a size's entries
READOUTS = {  # name: (pools, each target chooses among them by CV)
    "fitted": (("global", "foreground", "measures"), True), "fitted_all": (("global", "foreground", "measures"), False),
    "fitted_pools": (("global", "foreground"), False), "fitted_measures_only": (("measures",), False)}


# ------------------------------------------------------------------------------------------- set-up
def prepare(args, size: dict, base: str) -> dict:
    """Texture layout, conversion, plans, preprocessing and the split; reused when the settings match."""
    from appearance_target import write_layout
    from nnunet_mtl.conversion.detect import convert
    from nnunet_mtl.planning import plan_and_preprocess, use_base_dir
    from split_tools.splits import make_splits, write_splits
    paths = use_base_dir(base)
    shrink = {k: v for k, v in (("max_features", size["max_features"]), ("batch_size", size["batch"])) if v}
    settings = {"data": os.path.abspath(args.data), "size": args.size, "shrink": shrink, "split_seed": SPLIT_SEED}
    marker = os.path.join(base, "study_setup.json")
    stored = stored_setup(marker, settings)
    if stored is not None:
        return stored
    layout = write_layout(args.data, os.path.join(base, "data_texture"), SPLIT_SEED)
    if size["cases"]:
        from accuracy import subset_layout
        layout = subset_layout(layout, size["cases"], SPLIT_SEED, os.path.join(base, "subset"))
    raw = convert(layout, paths["nnUNet_raw"], DATASET_ID, "HippocampusTexture", labels=LABELS)
    plans = plan_and_preprocess(DATASET_ID, "plain", (size["configuration"],), num_processes=2, shrink=shrink or None)
    pre = os.path.join(paths["nnUNet_preprocessed"], os.path.basename(raw))
    splits = make_splits(os.path.join(pre, "dataset.json"), mode="stratified", n_folds=5, seed=SPLIT_SEED,
                         test_fraction=0.3)
    write_splits([{"train": sorted(splits[0]["train"]), "val": sorted(splits[0]["val"])}], pre, overwrite=True)
    stored = {"settings": settings, "dataset_id": DATASET_ID, "name": os.path.basename(raw), "raw": raw,
              "preprocessed": pre, "plans": plans, "configuration": size["configuration"],
              "train": sorted(splits[0]["train"] + splits[0]["val"]), "fit_val": sorted(splits[0]["val"]),
              "test": sorted(splits.test)}
    with open(marker, "w") as f:
        json.dump(stored, f, indent=1)
    return stored


def budget_of(size: dict, heads_only: bool = False) -> dict:
    return {"num_epochs": size["heads_epochs"] if heads_only else size["epochs"],
            "num_iterations_per_epoch": size["iterations"], "num_val_iterations_per_epoch": size["val_iterations"]}


def model_folder(base: str, setup: dict, arm: Arm, seed: int) -> str:
    return os.path.join(base, "results", f"{arm.name}_s{seed}", setup["name"],
                        f"{arm.trainer}__{setup['plans']}__{setup['configuration']}")


def knobs_for(arm: Arm, budget: dict, base: str, setup: dict, seed: int) -> dict:
    """The arm's knobs for this budget: a recipe's schedule scaled from its epochs to the budget's, no early
    stop (every arm gets the same steps); heads-only arms start from the same seed's stock model."""
    from nnunet_mtl.training.knobs import recipe_knobs
    knobs = dict(arm.knobs)
    epochs = budget["num_epochs"]
    if "recipe" in knobs:
        recipe = recipe_knobs(knobs.pop("recipe"))
        scale = epochs / recipe["num_epochs"]
        recipe.update(warmup_epochs=max(1, round(recipe["warmup_epochs"] * scale)),
                      ramp_epochs=max(1, round(recipe["ramp_epochs"] * scale)))
        for k in ("num_epochs", "early_stopping_patience"):
            recipe.pop(k)
        knobs = {**recipe, **knobs, "early_stopping_patience": epochs + 1}
    elif arm.starts_from:
        stock = model_folder(base, setup, next(a for a in TRAINED if a.name == arm.starts_from), seed)
        knobs = {**knobs, "init_from": stock, "heads_only_epochs": epochs, "warmup_epochs": 0, "ramp_epochs": 1,
                 "early_stopping_patience": epochs + 1}
    elif arm.trainer.startswith("nnUNetTrainerMTL"):
        knobs = arm_knobs(arm, budget, {})
    return knobs


# ------------------------------------------------------------------------------------------------ jobs
def train_job(arm: Arm, seed: int, setup: dict, base: str, budget: dict, device: str) -> None:
    """One arm, one seed, in this process (resumes from its checkpoint_latest)."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
    from nnunet_mtl.planning import use_base_dir
    from nnunet_mtl.training.knobs import knob_overrides
    folder = model_folder(base, setup, arm, seed)
    knobs = knobs_for(arm, budget, base, setup, seed)
    record = {"trainer": arm.trainer, "knobs": knobs, "budget": budget, "seed": seed}
    marker = os.path.join(os.path.dirname(os.path.dirname(folder)), "arm.json")
    if os.path.isfile(os.path.join(folder, "fold_0", "checkpoint_final.pth")) and os.path.isfile(marker):
        if json.load(open(marker))["record"] == record:
            print(f"[{arm.name} s{seed}] kept", flush=True)
            return
    use_base_dir(base, results=os.path.dirname(os.path.dirname(folder)))
    seed_everything(seed)
    start = time.perf_counter()
    started = os.path.join(os.path.dirname(os.path.dirname(folder)), "arm_started.json")
    same = os.path.isfile(started) and json.load(open(started)) == record
    resume = same and os.path.isfile(os.path.join(folder, "fold_0", "checkpoint_latest.pth"))
    if not same and os.path.isdir(folder):  # a checkpoint of other settings is never continued
        shutil.rmtree(folder)
    with open(started, "w") as f:
        json.dump(record, f)
    with knob_overrides(**budget, **knobs):
        t = get_trainer_from_args(str(setup["dataset_id"]), setup["configuration"], 0, arm.trainer, setup["plans"],
                                  device=torch.device(device))
        for name, value in budget.items():
            setattr(t, name, value)
        maybe_load_checkpoint(t, resume, False, None)
        t.run_training()
    with open(marker, "w") as f:
        json.dump({"record": record, "train_s": time.perf_counter() - start, "resumed": resume}, f, indent=1)


def eval_job(arm: Arm, seed: int, setup: dict, base: str, device: str, mirroring: bool) -> None:
    """Scores of one trained model on the test cases: Dice, its own heads, and the read-outs of its features
    (and, for stock, the predicted mask's volume); written to ``BASE/scores/ARM_sSEED.json``."""
    from nnunet_mtl.dataset_spec import DatasetSpec
    out = os.path.join(base, "scores", f"{arm.name}_s{seed}.json")
    folder = model_folder(base, setup, arm, seed)
    stamp = os.path.getmtime(os.path.join(folder, "fold_0", "checkpoint_final.pth"))
    if os.path.isfile(out) and json.load(open(out)).get("checkpoint_mtime") == stamp:
        return
    table = DatasetSpec.from_file(os.path.join(setup["raw"], "dataset.json")).table
    pred = predict_arm(folder, setup, device, mirroring)
    rows = {}
    if not arm.starts_from:
        rows[arm.name] = {"dice": dice_scores(pred["masks"], setup)}
    if pred["heads"] and arm.name != "stock":
        rows.setdefault(arm.name, {})["heads"] = head_scores(pred["heads"], table, setup["test"])
    if arm.name == "stock":
        rows["mask_volume"] = {"heads": head_scores(mask_volume_outputs(pred["masks"], setup, table), table,
                                                    setup["test"])}
    if not arm.starts_from:
        for name, (pools, select) in READOUTS.items():
            if name != "fitted" and arm.name != "stock":
                continue  # the measures read the segmentation: compared on the stock model only
            key = name if arm.name == "stock" else f"{arm.name}+{name}"
            rows[key] = {"heads": fitted_scores(folder, f"{key}_s{seed}", pools, setup, base, device, table, seed,
                                                select)}
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"checkpoint_mtime": stamp, "rows": rows, "predict_s": pred["predict_s"]}, f, indent=1,
                  default=float)


def mask_volume_outputs(masks: dict, setup: dict, table) -> dict:
    """The predicted mask's volume as the read-out: ml for regression targets; for a classification, a score
    rising with the volume (the size classes are defined by a volume threshold, so AUC reads it directly)."""
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
    reader = SimpleITKIO()
    ending = json.load(open(os.path.join(setup["raw"], "dataset.json")))["file_ending"]
    outs = {}
    for case, mask in masks.items():
        _, props = reader.read_seg(os.path.join(setup["raw"], "labelsTr", case + ending))
        ml = float((mask > 0).sum() * np.prod(props["spacing"]) / 1000.0)
        for t in table.spec:
            if not t.is_classification:
                outs.setdefault(case, {})[t.name] = np.array([ml])
            else:
                train_ml = {c: table.value(c, "hippocampus_ml") for c in setup["train"]}
                larger = "large" if "large" in t.classes else t.classes[-1]
                score = ml - float(np.median(list(train_ml.values()))) if t.name == "size" else 0.0
                p = 1.0 / (1.0 + np.exp(-score))  # per ml: rank-preserving, no saturation at real volumes
                probs = np.full(len(t.classes), (1 - p) / max(1, len(t.classes) - 1))
                probs[t.classes.index(larger)] = p
                outs.setdefault(case, {})[t.name] = probs
    return outs


def fitted_scores(folder: str, name: str, pools, setup: dict, base: str, device: str, table, seed: int,
                  select: bool) -> dict:
    """Heads fitted in closed form on the model's pooled features of the train + validation cases, scored on
    the test cases (their out-of-fold rows)."""
    from nnunet_mtl import prediction_table
    from nnunet_mtl.training.fitting import fit_heads
    split = os.path.join(base, "fitted", "split.json")
    os.makedirs(os.path.dirname(split), exist_ok=True)
    if not os.path.isfile(split):
        tmp = f"{split}.{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump([{"train": setup["train"], "val": setup["test"]}], f)
        os.replace(tmp, split)
    out = os.path.join(base, "fitted", name)
    summary = fit_heads(folder, out, spec=table.spec, folds=[0], splits_file=split, device=device, backend="torch",
                        cache_dir=os.path.join(base, "fitted", "cache"), pools=pools, seed=seed, overwrite=True,
                        report=lambda line: print(f"[{name}] {line}", flush=True), select_pools=select)
    rows = prediction_table.read(os.path.join(out, "fold_0", "validation", "predictions.csv"), table.spec)
    outputs = {c: {t.name: (r["probs"][t.name] if t.is_classification else np.array([r[t.name]]))
                   for t in table.spec} for c, r in rows.items()}
    scores = head_scores(outputs, table, setup["test"])
    for t, chosen in summary["folds"]["0"].get("pools_chosen", {}).items():
        if t in scores:
            scores[t]["pools"] = chosen
    return scores


def run_jobs(jobs, args, base: str, log_dir: str) -> list:
    """Each job ``(kind, arm, seed)`` as ``python convergence_study.py --job ...`` in its own process, one
    thread each, ``args.workers`` at a time; returns the failed ones (their logs named)."""
    os.makedirs(log_dir, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}

    def one(job):
        kind, arm, seed = job
        log = os.path.join(log_dir, f"{kind}_{arm}_s{seed}.log")
        cmd = [sys.executable, os.path.abspath(__file__), "--job", kind, arm, str(seed), "--base_dir", base,
               "--size", args.size, "--data", args.data] + (["--device", args.device] if args.device else []) \
            + [x for k in OVERRIDES if getattr(args, k) for x in (f"--{k}", str(getattr(args, k)))]
        start = time.perf_counter()
        with open(log, "a") as f:
            rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        print(f"[{kind} {arm} s{seed}] {'done' if rc == 0 else f'FAILED (exit {rc}), see {log}'} in "
              f"{time.perf_counter() - start:.0f} s; load {load_average()}", flush=True)
        return job if rc else None

    futures = {}

    def after(job):
        """Run ``job`` once the jobs it reads from are done (earlier in the queue, so running or finished)."""
        kind, arm, seed = job
        deps = [("train", arm, seed)] if kind == "eval" else []
        starts = next((a.starts_from for a in TRAINED + HEADS_ONLY if a.name == arm), "")
        if starts:
            deps.append(("train", starts, seed))
        for d in deps:
            if d in futures and futures[d].result() is not None:
                print(f"[{kind} {arm} s{seed}] skipped: {d} failed", flush=True)
                return job
        return one(job)

    with cf.ThreadPoolExecutor(args.workers) as pool:
        for job in jobs:
            futures[job] = pool.submit(after, job)
        return [j for j in (f.result() for f in futures.values()) if j]


# ------------------------------------------------------------------------------------------- report
def learning_curves(base: str, setup: dict, seeds) -> dict:
    """Per trained arm and seed: nnU-Net's per-epoch EMA pseudo-Dice on the validation cases and the train
    loss, read from checkpoint_final's log."""
    import torch
    out = {}
    for arm in TRAINED:
        for s in seeds:
            path = os.path.join(model_folder(base, setup, arm, s), "fold_0", "checkpoint_final.pth")
            if os.path.isfile(path):
                log = torch.load(path, map_location="cpu", weights_only=False)["logging"]
                out[f"{arm.name}_s{s}"] = {"ema_fg_dice": [float(x) for x in log["ema_fg_dice"]],
                                           "train_loss": [float(x) for x in log["train_losses"]]}
    return out


PLATEAU = 0.01  # issue 29: the validation Dice within 0.01 over the last fifth of the steps


def plateau(curve) -> float:
    """Range (max - min) of the EMA pseudo-Dice over the last fifth of the epochs."""
    tail = curve[-max(2, len(curve) // 5):]
    return float(max(tail) - min(tail))


def plot_curves(curves: dict, path: str) -> None:
    from matplotlib.figure import Figure
    fig = Figure(figsize=(7, 4))
    ax = fig.subplots()
    colours = {"stock": "k", "joint_sgd": "tab:blue", "seed_design": "tab:red"}
    for key, c in curves.items():
        arm = key.rsplit("_s", 1)[0]
        ax.plot(range(1, len(c["ema_fg_dice"]) + 1), c["ema_fg_dice"], color=colours.get(arm, "grey"), alpha=0.7,
                label=arm if key.endswith("_s0") else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("EMA pseudo-Dice (validation cases)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.savefig(path, dpi=100, bbox_inches="tight")


def collect(base: str, seeds) -> dict:
    """{row name: {seed: row}} from the score files."""
    rows = {}
    for s in seeds:
        for arm in TRAINED + HEADS_ONLY:
            path = os.path.join(base, "scores", f"{arm.name}_s{s}.json")
            if os.path.isfile(path):
                for name, row in json.load(open(path))["rows"].items():
                    rows.setdefault(name, {})[s] = row
    return rows


def metric_values(row: dict, spec, struct_names) -> dict:
    out = {}
    for s in struct_names:
        if "dice" in row:
            out[f"dice_{s}"] = row["dice"][s]
    for t in spec:
        h = row.get("heads", {}).get(t.name)
        if h is None:
            continue
        if t.is_classification:
            out[f"{t.name}_auc"] = h["roc_auc"]
            out[f"{t.name}_f1"] = h["macro_f1"]
        else:
            out[f"{t.name}_r"] = h["pearson_r"]
            out[f"{t.name}_mae"] = h["mae"]
    return out


def summary_table(rows: dict, spec, struct_names) -> list:
    """Markdown lines: per row, mean ± sd over seeds (n seeds) of every metric, then the per-seed values."""
    keys = []
    for r in rows.values():
        for s_row in r.values():
            for k in metric_values(s_row, spec, struct_names):
                if k not in keys:
                    keys.append(k)
    lines = ["| arm | seeds | " + " | ".join(keys) + " |", "|" + "---|" * (len(keys) + 2)]
    for name, by_seed in rows.items():
        vals = {k: [metric_values(r, spec, struct_names).get(k) for r in by_seed.values()] for k in keys}
        cells = []
        for k in keys:
            v = [x for x in vals[k] if x is not None and np.isfinite(x)]
            cells.append("" if not v else f"{np.mean(v):.3f} ± {np.std(v, ddof=1) if len(v) > 1 else 0:.3f}")
        lines.append(f"| {name} | {len(by_seed)} | " + " | ".join(cells) + " |")
    return lines


def fmt_ci(ci) -> str:
    return "-" if not ci or not np.isfinite(ci.get("low", np.nan)) else f"[{ci['low']:.3f}, {ci['high']:.3f}]"


def per_seed_lines(rows: dict, spec, struct_names) -> list:
    lines = []
    for name, by_seed in rows.items():
        for s, r in sorted(by_seed.items()):
            m = metric_values(r, spec, struct_names)
            ci = {t.name: r.get("heads", {}).get(t.name, {}) for t in spec}
            extra = "; ".join(f"{t} CI {fmt_ci(v.get('roc_auc_ci') or v.get('pearson_r_ci'))}"
                              + (f" reads {'+'.join(v['pools'])}" if v.get("pools") else "") for t, v in ci.items() if v)
            lines.append(f"{name} s{s}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()) + (f"; {extra}" if extra
                                                                                                  else ""))
    return lines


# --------------------------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.normpath(os.path.join(HERE, "..", "..", "shared", "data", "hippocampus")))
    p.add_argument("--size", default="cpu", choices=sorted(SIZES), help="cpu (default: 2 cores), quick (smoke run), "
                                                                       "full (a GPU)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=int, default=None, help="override the size's epochs (every trained arm; a longer "
                                                           "budget retrains, the set-up is kept)")
    p.add_argument("--iterations", type=int, default=None, help="override the size's iterations per epoch")
    p.add_argument("--val_iterations", type=int, default=None, help="override the size's validation iterations")
    p.add_argument("--batch", type=int, default=None, help="override the size's batch (re-plans: a set-up of its own)")
    p.add_argument("--workers", type=int, default=2, help="processes at a time (one per core)")
    p.add_argument("--base_dir", default=os.path.join(os.getcwd(), "convergence_study"))
    p.add_argument("--device", default=None)
    p.add_argument("--report_only", action="store_true")
    p.add_argument("--job", nargs=3, metavar=("KIND", "ARM", "SEED"), help=argparse.SUPPRESS)
    return p


def main():
    args = build_parser().parse_args()
    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    set_runtime_env(device)
    size = dict(SIZES[args.size], **{k: getattr(args, k) for k in OVERRIDES if getattr(args, k)})
    base = os.path.abspath(args.base_dir)
    setup = prepare(args, size, base)
    arms = {a.name: a for a in TRAINED + HEADS_ONLY}
    mirroring = args.size == "full"
    if args.job:
        kind, name, seed = args.job
        arm = arms[name]
        if kind == "train":
            train_job(arm, int(seed), setup, base, budget_of(size, bool(arm.starts_from)), device)
        else:
            eval_job(arm, int(seed), setup, base, device, mirroring)
        return
    t0 = time.perf_counter()
    print("\n".join(machine_lines(device)), flush=True)
    print(f"size {args.size}: {budget_of(size)}; {len(setup['train'])} train+val / {len(setup['test'])} test cases; "
          f"seeds {args.seeds}; {args.workers} workers; base {base}", flush=True)
    failed = []
    if not args.report_only:
        # stock first (the heads-only arms and read-outs start from it), then the other arms, seed by seed
        first = [("train", "stock", s) for s in args.seeds]
        rest = [("train", a.name, s) for s in args.seeds for a in TRAINED if a.name != "stock"]
        heads = [("train", a.name, s) for s in args.seeds for a in HEADS_ONLY]
        evals = [("eval", a.name, s) for s in args.seeds for a in TRAINED + HEADS_ONLY]
        failed += run_jobs(first + rest + heads + evals, args, base, os.path.join(base, "logs"))
    report(base, setup, args, size, device, time.perf_counter() - t0, failed)


def report(base, setup, args, size, device, seconds, failed) -> None:
    from nnunet_mtl.dataset_spec import DatasetSpec
    table = DatasetSpec.from_file(os.path.join(setup["raw"], "dataset.json")).table
    spec, struct_names = table.spec, list(structures(setup))
    rows = {"trivial": {s: {"heads": head_scores(trivial_outputs(table, setup["train"], setup["test"]), table,
                                                 setup["test"])} for s in args.seeds}}
    rows.update(collect(base, args.seeds))
    curves = learning_curves(base, setup, args.seeds)
    out = os.path.join(base, "study")
    os.makedirs(out, exist_ok=True)
    if curves:
        plot_curves(curves, os.path.join(out, "curves.png"))
    lines = [f"# Convergence study ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})", "",
             *[f"- {m}" for m in machine_lines(device)],
             f"- size {args.size}: {budget_of(size)}, heads-only {size['heads_epochs']} epochs; "
             f"{len(setup['train'])} train+val / {len(setup['test'])} held-out test cases; seeds {args.seeds}; "
             f"{args.workers} processes x 1 thread; wall {seconds:.0f} s; load at the end {load_average()}", "",
             f"Plateau (range of the EMA pseudo-Dice over the last fifth of the epochs; criterion {PLATEAU}): "
             + ", ".join(f"{k} {plateau(c['ema_fg_dice']):.3f}{'' if plateau(c['ema_fg_dice']) <= PLATEAU else ' (NOT)'}"
                         f" (last {c['ema_fg_dice'][-1]:.3f})" for k, c in curves.items()), "",
             *summary_table(rows, spec, struct_names), "", "Per seed (AUC / r with bootstrap 95 % CIs):", "",
             *[f"- {x}" for x in per_seed_lines(rows, spec, struct_names)]]
    if failed:
        lines += ["", f"FAILED jobs: {failed} (logs in {os.path.join(base, 'logs')})"]
    with open(os.path.join(out, "study.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(out, "study.json"), "w") as f:
        json.dump({"rows": rows, "curves": curves, "setup": setup, "size": size, "seconds": seconds}, f, indent=1,
                  default=float)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
