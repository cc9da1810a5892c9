"""Benchmark (not a test): left/right lung Dice with and without left-right mirroring.

Writes one tiny synthetic 2D lateral radiograph dataset (left_lung / right_lung / heart), plans it
with a shrunken nnU-Net plan, trains each trainer on fold 0 at the same small budget on CPU, and
prints nnU-Net's whole-case validation Dice per label and the mirror axes each trainer used.

By default the images are symmetric (centred heart, equal lungs: only image position tells left
from right; ``--asymmetric`` gives the old images with the heart patient-left) and the dataset
does NOT declare its lateral pairs, because every nnUNetTrainerMTL stops left-right mirroring
when pairs are declared: undeclared, nnUNetTrainerMTL mirrors both axes (nnU-Net's default) and
nnUNetTrainerMTLOrientationAware acts on the pairs it detects from the label names (no LR
mirror). ``--declare-pairs`` declares them (then both trainers skip the LR mirror).

    python benchmarks/lateral_mirroring.py [--asymmetric] [--declare-pairs] [--trainers ...]
"""
import argparse
import json
import os
import platform
import tempfile
import time

import torch

LATERAL_PAIRS = [["left_lung", "right_lung"]]
DEFAULT_TRAINERS = ("nnUNetTrainerMTL", "nnUNetTrainerMTLOrientationAware")
TINY_2D = dict(max_features=32, batch_size=4, n_stages=4)


def write_dataset(raw_root: str, dataset_id: int, n: int, size: int, seed: int, symmetric: bool = True,
                  declare_pairs: bool = False) -> str:
    from nnunet_mtl.conversion.nnunet_raw import write_raw_dataset
    from nnunet_mtl.synthetic import radiograph_cases, radiograph_labels
    cases, table = radiograph_cases(n, size=(size, size), seed=seed, lateral=True, symmetric=symmetric)
    return write_raw_dataset(raw_root, dataset_id, "LateralBench", cases, table, radiograph_labels(True),
                             {"0": "rescale_to_0_1"},
                             extra_mtl={"lateral_pairs": LATERAL_PAIRS} if declare_pairs else None)


def mirror_axes_from_log(output_folder: str) -> str:
    """The trainer's 'Orientation: ...' log line (which axes it mirrored in training and at test time)."""
    lines = []
    for name in sorted(os.listdir(output_folder)):
        if name.startswith("training_log") and name.endswith(".txt"):
            with open(os.path.join(output_folder, name)) as f:
                lines += [l.split("Orientation:", 1)[1].strip() for l in f if "Orientation:" in l]
    return lines[-1] if lines else "(no Orientation line in the training log)"


def train_and_score(dataset_id: int, plans: str, trainer: str, knobs: dict) -> dict:
    from nnunetv2.run.run_training import run_training
    from nnunet_mtl.training.knobs import knob_overrides
    start = time.time()
    with knob_overrides(**knobs):
        run_training(str(dataset_id), "2d", 0, trainer, plans, device=torch.device("cpu"))
    seconds = time.time() - start
    from nnunetv2.paths import nnUNet_results
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    fold = os.path.join(nnUNet_results, maybe_convert_to_dataset_name(dataset_id),
                        f"{trainer}__{plans}__2d", "fold_0")
    with open(os.path.join(fold, "validation", "summary.json")) as f:
        mean = json.load(f)["mean"]
    return {"left_lung": mean["1"]["Dice"], "right_lung": mean["2"]["Dice"], "heart": mean["3"]["Dice"],
            "seconds": seconds, "mirroring": mirror_axes_from_log(fold)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base-dir", default=None, help="nnU-Net folders go here (default: a new temp folder)")
    p.add_argument("--trainers", nargs="+", default=list(DEFAULT_TRAINERS))
    p.add_argument("--cases", type=int, default=30)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--patch", type=int, default=None,
                   help="training patch edge (default: nnU-Net's plan, the whole image); smaller patches hide "
                        "the global cues (heart side) that tell left from right")
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--iterations", type=int, default=25, help="training iterations per epoch")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--asymmetric", dest="symmetric", action="store_false",
                   help="old images: heart patient-left, left lung 7%% shorter (a side cue that survives mirroring)")
    p.add_argument("--symmetric", dest="symmetric", action="store_true",
                   help="centred heart, equal lungs: only image position tells left from right (default)")
    p.add_argument("--declare-pairs", action="store_true",
                   help="declare lateral_pairs in dataset.json; then no nnUNetTrainerMTL mirrors the LR axis, "
                        "so there is no mirroring baseline")
    p.set_defaults(symmetric=True)
    args = p.parse_args()

    os.environ.setdefault("nnUNet_n_proc_DA", "0")
    os.environ.setdefault("nnUNet_def_n_proc", "2")
    os.environ["nnUNet_compile"] = "f"
    from nnunet_mtl.planning import plan_and_preprocess, use_base_dir
    paths = use_base_dir(args.base_dir or tempfile.mkdtemp(prefix="lateral_bench_"))
    dataset_id = 930
    write_dataset(paths["nnUNet_raw"], dataset_id, args.cases, args.size, args.seed, args.symmetric,
                  args.declare_pairs)
    shrink = dict(TINY_2D, patch_size=(args.patch, args.patch)) if args.patch else TINY_2D
    plans = plan_and_preprocess(dataset_id, "plain", ("2d",), shrink=shrink, num_processes=1)
    knobs = dict(num_epochs=args.epochs, num_iterations_per_epoch=args.iterations, num_val_iterations_per_epoch=5,
                 warmup_epochs=1, ramp_epochs=1, initial_lr=args.lr, early_stopping_patience=10 ** 6)
    results = {t: train_and_score(dataset_id, plans, t, knobs) for t in args.trainers}

    print(f"\nmachine: {platform.node()} ({platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, CPU)")
    print(f"data: {args.cases} synthetic {args.size}x{args.size} lateral radiographs "
          f"({'symmetric' if args.symmetric else 'asymmetric: heart patient-left'}, lateral pairs "
          f"{'declared' if args.declare_pairs else 'not declared'}), fold 0 validation; "
          f"patch {args.patch or 'planned'}, {args.epochs} epochs x {args.iterations} iterations, "
          f"batch {TINY_2D['batch_size']}, lr {args.lr}")
    print(f"{'trainer':36s} {'left_lung':>9s} {'right_lung':>10s} {'heart':>6s} {'seconds':>8s}")
    for t, r in results.items():
        print(f"{t:36s} {r['left_lung']:9.3f} {r['right_lung']:10.3f} {r['heart']:6.3f} {r['seconds']:8.0f}")
    for t, r in results.items():
        print(f"{t}: {r['mirroring']}")


if __name__ == "__main__":
    main()
