"""Benchmark (not a test): end-to-end prediction time, stock ``nnUNetv2_predict`` vs ``nnunet_mtl_predict``.

Same model folder (an nnUNetTrainerMTL model), same input cases, one run. Each variant is a
fresh subprocess timed from launch to exit, because that is what a user waits for: process
start-up, model loading, preprocessing, sliding window, resampling and export all count. Both
keep nnU-Net's defaults that matter for accuracy (mirroring on, step size 0.5): a speed-up from
dropping either does not count. Variants run interleaved, in a rotating order, --repeats times;
the table shows medians. The masks are compared per case and per label (Dice; both empty = 1).

Tiny CPU run (default settings, ~3-4 min on 2 cores):
    python benchmarks/inference_speed.py --base_dir /tmp/mtl_bench --device cpu
GPU run: see docs/benchmarks.md.
"""
import argparse
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (add_dataset_args, describe, ensure_model, load_average, machine_lines,  # noqa: E402
                    prepare_dataset, set_runtime_env)

STOCK_PY = ("import sys; from nnunetv2.inference.predict_from_raw_data import predict_entry_point as m; "
            "sys.argv[0] = 'nnUNetv2_predict'; m()")


def stock_command(launcher: str) -> list:
    if launcher == "console":
        return ["nnUNetv2_predict"]
    return [sys.executable, "-c", STOCK_PY]


def ours_command(launcher: str) -> list:
    if launcher == "console":
        return ["nnunet_mtl_predict"]
    return [sys.executable, "-m", "nnunet_mtl.cli.predict"]


def default_launcher() -> str:
    """Console scripts when installed (what users type); ``python -c``/``-m`` otherwise (GPU image)."""
    return "console" if shutil.which("nnUNetv2_predict") and shutil.which("nnunet_mtl_predict") else "python"


def run_timed(cmd: list, log_path: str, env: dict) -> float:
    """Wall seconds from launch to exit; a failing command stops the benchmark with its log."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode
    seconds = time.perf_counter() - start
    if rc != 0:
        with open(log_path) as f:
            tail = f.read()[-4000:]
        raise SystemExit(f"command failed (rc {rc}): {shlex.join(cmd)}\n--- log tail ---\n{tail}")
    return seconds


def masks_in(folder: str) -> dict:
    return {f[:-len(".nii.gz")]: os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".nii.gz")}


def compare_masks(folder_a: str, folder_b: str, labels: list) -> dict:
    """Dice per case and label between two mask folders; also exact voxel agreement."""
    import numpy as np
    import SimpleITK as sitk
    a, b = masks_in(folder_a), masks_in(folder_b)
    if set(a) != set(b):
        raise SystemExit(f"different cases: {sorted(set(a) ^ set(b))}")
    dices, agree, fg = [], [], []
    for case in a:
        x = sitk.GetArrayFromImage(sitk.ReadImage(a[case]))
        y = sitk.GetArrayFromImage(sitk.ReadImage(b[case]))
        if x.shape != y.shape:
            raise SystemExit(f"{case}: shapes differ {x.shape} vs {y.shape}")
        agree.append(float((x == y).mean()))
        fg.append(int((x > 0).sum()))
        for lab in labels:
            xa, ya = x == lab, y == lab
            denom = int(xa.sum()) + int(ya.sum())
            dices.append(1.0 if denom == 0 else 2.0 * int((xa & ya).sum()) / denom)
    return {"dice_min": min(dices), "dice_mean": float(np.mean(dices)), "identical_voxels_min": min(agree),
            "foreground_voxels_mean": float(np.mean(fg)), "cases": len(a)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_args(p)
    g = p.add_argument_group("inference")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--fold", default="0")
    g.add_argument("--trainer", default="nnUNetTrainerMTL")
    g.add_argument("--train_iterations", type=int, default=3, help="iterations to train the model being timed")
    g.add_argument("--input", default=None, help="input folder (default: the dataset's imagesTs)")
    g.add_argument("--repeats", type=int, default=3)
    g.add_argument("--processes", action="store_true", help="also time ours with --engine processes")
    g.add_argument("--launcher", choices=["console", "python"], default=None,
                   help="console scripts, or python -c/-m (where the console scripts are not installed)")
    g.add_argument("--stock_extra", default="", help="extra arguments for nnUNetv2_predict (quoted)")
    g.add_argument("--ours_extra", default="", help="extra arguments for nnunet_mtl_predict (quoted)")
    g.add_argument("--work_dir", default=None, help="outputs and logs (default: BASE_DIR/inference_bench)")
    g.add_argument("--keep_outputs", action="store_true")
    args = p.parse_args()

    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    set_runtime_env(device)
    ds = prepare_dataset(args)
    model = ensure_model(ds, args.trainer, int(args.fold) if args.fold != "all" else args.fold,
                         args.train_iterations, device)
    inputs = os.path.abspath(args.input or ds.test_images)
    n_cases = len([f for f in os.listdir(inputs) if f.endswith("_0000.nii.gz")])
    work = os.path.abspath(args.work_dir or os.path.join(os.path.dirname(ds.paths["nnUNet_raw"]), "inference_bench"))
    os.makedirs(work, exist_ok=True)
    launcher = args.launcher or default_launcher()
    # the stock CLI finds our trainer class (named in the checkpoint) through nnUNet_extTrainer
    env = dict(os.environ)

    variants = {
        "stock": stock_command(launcher) + ["-i", inputs, "-o", "{out}", "-d", str(ds.id), "-c", ds.configuration,
                                            "-f", args.fold, "-tr", args.trainer, "-p", ds.plans, "-device", device]
        + shlex.split(args.stock_extra),
        "ours": ours_command(launcher) + ["-i", inputs, "-o", "{out}", "-m", model, "-f", args.fold,
                                          "-device", device] + shlex.split(args.ours_extra),
    }
    if args.processes:
        variants["ours_processes"] = variants["ours"] + ["--engine", "processes"]
    names = list(variants)
    times = {n: [] for n in names}
    outs = {n: os.path.join(work, f"out_{n}") for n in names}
    print(f"[bench] {n_cases} cases from {inputs}; launcher {launcher}; device {device}", flush=True)
    for n in names:
        print(f"[bench] {n}: {shlex.join([a.replace('{out}', outs[n]) for a in variants[n]])}", flush=True)
    loads = [load_average()]
    for r in range(args.repeats):
        order = names[r % len(names):] + names[:r % len(names)]  # rotate: no variant always runs first
        for n in order:
            shutil.rmtree(outs[n], ignore_errors=True)  # ours skips existing masks (continue mode): start empty
            cmd = [a.replace("{out}", outs[n]) for a in variants[n]]
            s = run_timed(cmd, os.path.join(work, f"log_{n}_{r}.txt"), env)
            times[n].append(s)
            print(f"[bench] repeat {r} {n:15s} {s:7.2f} s   load {load_average()}", flush=True)
        loads.append(load_average())

    labels = [v for k, v in ds_labels(ds).items() if v != 0]
    comparisons = {n: compare_masks(outs["stock"], outs[n], labels) for n in names if n != "stock"}
    stock_med = statistics.median(times["stock"])

    print("\n=== inference_speed: end to end, process start included; mirroring on, step 0.5 ===")
    for line in machine_lines(device):
        print(line)
    print(f"load average before/after each repeat: {' | '.join(loads)}")
    print(f"model: {describe(ds)}; fold {args.fold}; {args.trainer} trained {args.train_iterations} iterations")
    print(f"input: {n_cases} cases {tuple(args.shape)} ({inputs}); repeats {args.repeats}, interleaved, medians\n")
    header = f"| {'variant':15s} | cases | total s (median) | s/case | runs (s) | stock/variant | Dice vs stock min / mean |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for n in names:
        med = statistics.median(times[n])
        runs = " ".join(f"{t:.1f}" for t in times[n])
        dice = "-" if n == "stock" else f"{comparisons[n]['dice_min']:.4f} / {comparisons[n]['dice_mean']:.4f}"
        print(f"| {n:15s} | {n_cases:5d} | {med:16.2f} | {med / n_cases:6.2f} | {runs} | {stock_med / med:13.2f} | "
              f"{dice} |")
    for n, c in comparisons.items():
        print(f"{n} vs stock: {c['cases']} cases, Dice per case and label min {c['dice_min']:.6f} mean "
              f"{c['dice_mean']:.6f}; identical voxels min {c['identical_voxels_min']:.6f}; mean foreground voxels "
              f"per case {c['foreground_voxels_mean']:.0f}")
        if c["dice_min"] < 0.999:
            print(f"WARNING: {n} masks differ from stock (Dice {c['dice_min']:.4f} < 0.999)")
    if not os.path.isfile(os.path.join(outs["ours"], "predictions.csv")):
        print("WARNING: ours wrote no predictions.csv")
    if not args.keep_outputs:
        for n in names:
            shutil.rmtree(outs[n], ignore_errors=True)


def ds_labels(ds) -> dict:
    import json
    with open(os.path.join(ds.raw_folder, "dataset.json")) as f:
        return json.load(f)["labels"]


if __name__ == "__main__":
    main()
