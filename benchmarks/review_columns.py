"""Issue 27 on real data: do the review columns keep their promises on held-out hippocampus cases?

Takes a stock nnU-Net model of the convergence study (``convergence_study.py``, 2d hippocampus with the texture
target) and its split: heads are fitted on the training cases (``nnunet_mtl_add_heads``' path), whose
validation cases (never trained on) give the temperatures, the conformal scores and the input check's
threshold; the held-out test cases are then predicted by the one engine (``predict_folder``, as
``nnunet_mtl_predict``) together with corrupted copies of a few of them (intensity inverted, axes swapped,
a volume of noise, intensities x10), and scored by the project's own evaluation (``evaluation.evaluate``):
empirical coverage and set size / interval width with CIs at ``--coverage``, the review flag's sensitivity for
wrong answers, ``seg_quality`` against the real Dice (Spearman, AUC for Dice < 0.5), and ``ood_score``'s flag
rate on the clean test cases (false flags) and on the corrupted ones. Prints a summary; writes
``BASE/review/review.json``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from common import load_average, machine_lines, set_runtime_env  # noqa: E402

CORRUPTIONS = ("inverted", "transposed", "noise", "scaled")


def corrupt(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    if kind == "inverted":
        return image.max() - image + image.min()
    if kind == "transposed":
        return np.ascontiguousarray(np.swapaxes(image, 0, 2))
    if kind == "noise":
        return rng.normal(float(image.mean()), float(image.std()) + 1e-6, image.shape).astype(np.float32)
    return image * 10.0


def write_inputs(setup: dict, cases, out: str, n_corrupt: int, seed: int) -> dict:
    """Test images (links) and corrupted copies of the first ``n_corrupt`` in nnU-Net's naming; returns
    {case id: corruption or ''}."""
    import SimpleITK as sitk
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(seed)
    kinds = {}
    for c in cases:
        src = os.path.join(setup["raw"], "imagesTr", f"{c}_0000.nii.gz")
        dst = os.path.join(out, f"{c}_0000.nii.gz")
        if not os.path.exists(dst):
            os.symlink(src, dst)
        kinds[c] = ""
    for c in cases[:n_corrupt]:
        image = sitk.ReadImage(os.path.join(setup["raw"], "imagesTr", f"{c}_0000.nii.gz"))
        arr = sitk.GetArrayFromImage(image).astype(np.float32)
        for kind in CORRUPTIONS:
            name = f"{kind}_{c}"
            written = sitk.GetImageFromArray(corrupt(arr, kind, rng))
            written.SetSpacing(image.GetSpacing())
            sitk.WriteImage(written, os.path.join(out, f"{name}_0000.nii.gz"))
            kinds[name] = kind
    return kinds


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--study_base", default=os.path.join(os.getcwd(), "convergence_study"),
                   help="the convergence study's --base_dir (its stock model and split)")
    p.add_argument("--seed", type=int, default=0, help="which seed's stock model")
    p.add_argument("--coverage", type=float, default=0.9)
    p.add_argument("--corrupt", type=int, default=5, help="test cases that also get corrupted copies")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    set_runtime_env(args.device)
    sys.path.insert(0, HERE)
    from convergence_study import TRAINED, model_folder
    from nnunet_mtl.dataset_spec import DatasetSpec
    from nnunet_mtl.evaluation.evaluate import evaluate
    from nnunet_mtl.inference.folders import predict_folder
    from nnunet_mtl.inference.loader import load_predictor
    from nnunet_mtl.planning import use_base_dir
    from nnunet_mtl.training.fitting import fit_heads
    t0 = time.perf_counter()
    base = os.path.abspath(args.study_base)
    setup = json.load(open(os.path.join(base, "study_setup.json")))
    use_base_dir(base)
    stock = model_folder(base, setup, TRAINED[0], args.seed)
    work = os.path.join(base, "review", f"s{args.seed}")
    table = DatasetSpec.from_file(os.path.join(setup["raw"], "dataset.json")).table
    fit_val = setup["fit_val"]
    fit_train = sorted(set(setup["train"]) - set(fit_val))
    split = os.path.join(work, "split.json")
    os.makedirs(work, exist_ok=True)
    with open(split, "w") as f:
        json.dump([{"train": fit_train, "val": fit_val}], f)
    model = os.path.join(work, "model")
    fit_heads(stock, model, spec=table.spec, folds=[0], splits_file=split, device=args.device, backend="torch",
              cache_dir=os.path.join(work, "cache"), seed=args.seed,
              report=lambda line: print(f"[fit] {line}", flush=True))
    inputs = os.path.join(work, "inputs")
    kinds = write_inputs(setup, setup["test"], inputs, args.corrupt, args.seed)
    out = os.path.join(work, "predictions")
    predictor = load_predictor(model, [0], "checkpoint_final.pth", args.device, use_mirroring=False, backend="torch")
    predictor.set_review(coverage=args.coverage)
    csv_path = predict_folder(predictor, inputs, out, overwrite=True)
    rows = {r["case_id"]: r for r in csv.DictReader(open(csv_path))}
    clean = [c for c, k in kinds.items() if not k]
    gt = os.path.join(work, "gt")
    os.makedirs(gt, exist_ok=True)
    for c in clean:
        dst = os.path.join(gt, f"{c}.nii.gz")
        if not os.path.exists(dst):
            os.symlink(os.path.join(setup["raw"], "labelsTr", f"{c}.nii.gz"), dst)
    clean_csv = os.path.join(work, "clean_predictions.csv")
    with open(csv_path) as f:
        reader = csv.DictReader(f)
        kept = [r for r in reader if r["case_id"] in set(clean)]
    with open(clean_csv, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=reader.fieldnames)
        w.writeheader()
        w.writerows(kept)
    clean_pred = os.path.join(work, "clean_masks")
    os.makedirs(clean_pred, exist_ok=True)
    for c in clean:
        dst = os.path.join(clean_pred, f"{c}.nii.gz")
        if not os.path.exists(dst):
            os.symlink(os.path.join(out, f"{c}.nii.gz"), dst)
    result = evaluate(gt_dir=gt, pred_dir=clean_pred, prediction_csv=clean_csv,
                      output_folder=os.path.join(work, "evaluation"), labels=table, n_bootstrap=1000,
                      seed=args.seed, label_names={1: "anterior", 2: "posterior"}, seg_labels=(1, 2))
    flags = {k: [] for k in ("",) + CORRUPTIONS}
    for c, k in kinds.items():
        flags[k].append(rows[c].get("ood_flag", "") == "yes")
    summary = {"conformal": {t: result.get("classification", {}).get(t, result.get("regression", {}).get(t, {}))
                             .get("conformal") for t in table.spec.names},
               "seg_quality": result.get("seg_quality"),
               "ood_flag_rate": {k or "clean": (float(np.mean(v)) if v else None) for k, v in flags.items()},
               "n_test": len(clean), "n_fit_train": len(fit_train), "n_calibration": len(fit_val),
               "coverage": args.coverage, "seconds": time.perf_counter() - t0, "machine": machine_lines(args.device),
               "load_end": load_average()}
    with open(os.path.join(work, "review.json"), "w") as f:
        json.dump(summary, f, indent=1, default=float)
    print(json.dumps(summary, indent=1, default=float))


if __name__ == "__main__":
    main()
