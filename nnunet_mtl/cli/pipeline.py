"""nnunet_mtl pipeline: convert -> plan/preprocess -> split -> train -> infer, all at once or one step at a time.

    python pipeline.py --demo                                   # synthetic data, every step, a few minutes on a CPU
    python pipeline.py --base_dir W --input_dir DATA            # everything
    python pipeline.py --base_dir W --input_dir DATA --prepare_only
    python pipeline.py --base_dir W --train_only --fold 0
    python pipeline.py --base_dir W --inference_only --test_input IN --test_output OUT [--explain]
    python pipeline.py --add_heads --stock_model STOCK --labels_csv L --model_dir MODEL   # heads on a stock model
    python pipeline.py --inference_only --model_dir MODEL --test_input IN --test_output OUT

A thin command line over nnunet_mtl.workflow; see README.md for the input layouts. ``pipeline.py`` at the
repository root and the console script ``nnunet_mtl_pipeline`` both run ``main`` here.
"""
import argparse
import os
import sys
import time

from nnunet_mtl.cli.backend_args import add_backend_argument
from nnunet_mtl.cli.engine_args import add_engine_arguments, engine_kwargs
from nnunet_mtl.commands.failures import run_command
from nnunet_mtl.cli.review_args import add_review_arguments, interval_tolerances
from nnunet_mtl.conversion.description import add_description_arguments, description_from_args
from nnunet_mtl.conversion.registry import LAYOUT_NAMES
from nnunet_mtl.training.knobs import (DEFAULT_HEADS, DEMO_BUDGET, DEMO_SHRINK, HEADS_CHOICES, add_knob_arguments,
                                      knobs_from_args)

DEFAULT_BASE_DIR = "nnunet_mtl_work"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    steps = p.add_argument_group("steps (default: all)")
    steps.add_argument("--prepare_only", action="store_true", help="convert, plan, preprocess and split, then stop")
    steps.add_argument("--train_only", action="store_true", help="train (needs a prepared base_dir)")
    steps.add_argument("--inference_only", action="store_true", help="predict with trained folds")
    steps.add_argument("--add_heads", action="store_true",
                       help="fit image-level heads on a trained stock nnU-Net model (--stock_model), written as the "
                            "model folder --model_dir (as nnunet_mtl_add_heads); with --inference_only, then predict "
                            "with it")
    steps.add_argument("--demo", nargs="?", const="2d", choices=["2d", "3d"],
                       help="make a small synthetic dataset (2d radiographs by default, or 3d pancreas layout) and run every step")

    data = p.add_argument_group("data")
    data.add_argument("--base_dir", default=None,
                      help=f"nnUNet_raw/_preprocessed/_results and outputs go here (default ./{DEFAULT_BASE_DIR}; "
                           f"--add_heads without it reads the stock model's split from the nnUNet_preprocessed "
                           f"already set)")
    data.add_argument("--input_dir", help="the user's data (pancreas layout, or images/ masks/ labels.csv)")
    data.add_argument("--layout", default="auto", choices=LAYOUT_NAMES, help="input layout (default: detected)")
    data.add_argument("--labels_csv", help="case_id + one column per image-level target")
    data.add_argument("--spec_json", help="target spec (names, kinds, classes, weights)")
    data.add_argument("--masks_dir", help="masks folder for the generic layout")
    data.add_argument("--test_dir", help="test images of the generic layout (go to imagesTs)")
    data.add_argument("--patient_column", help="labels CSV column with patient ids (grouped splits)")
    data.add_argument("--clip_percentiles", type=float, nargs=2, default=[0.5, 98.5],
                      help="intensity percentiles for 2D radiographs (default 0.5 98.5)")
    data.add_argument("--target_spacing", type=float, nargs="+", help="resample to this spacing (z y x / y x)")
    data.add_argument("--dataset_id", type=int, default=501)
    data.add_argument("--dataset_name", help="default: the input folder's name")
    add_description_arguments(data)

    plan = p.add_argument_group("planning and split")
    plan.add_argument("--planner", default="resenc_m", choices=["resenc_m", "resenc_l", "plain"])
    plan.add_argument("--configuration", help="nnU-Net configuration (default: 2d for 2D images, else 3d_fullres)")
    plan.add_argument("--split", dest="split_mode", choices=["stratified", "grouped", "fixed", "random"],
                      help="default: fixed when the layout has a validation/ folder, else stratified")
    plan.add_argument("--folds", type=int, default=5, help="number of folds for k-fold splits")
    plan.add_argument("--split_target", help="classification target to stratify on (default: the first)")
    plan.add_argument("--seed", type=int, default=12345)
    plan.add_argument("--max_features", type=int, help="cap features per stage (small GPUs, CPU smoke runs)")
    plan.add_argument("--batch_size", type=int, help="override the planned batch size")
    plan.add_argument("--patch_size", type=int, nargs="+", help="override the planned patch size")
    plan.add_argument("--n_stages", type=int, help="use only this many network stages")

    tr = p.add_argument_group("training")
    tr.add_argument("--trainer", help="default nnUNetTrainerMTL (orientation-aware when labels are left/right)")
    tr.add_argument("--fold", type=int, nargs="+",
                    help="fold(s) to train, to fit heads on (--add_heads) or to predict with (default: all)")
    tr.add_argument("--device", default=None, choices=["cuda", "cpu", "mps"], help="default: cuda if available")
    tr.add_argument("--num_gpus", type=int, default=1, help="DDP training on this many GPUs (nnU-Net's launcher)")
    tr.add_argument("--heads", default=DEFAULT_HEADS, choices=HEADS_CHOICES,
                    help="the image-level heads: fitted (default) = after training, each fold's heads are fitted in "
                         "closed form on the trained network's pooled whole-case features of its training cases and "
                         "written into its checkpoint (out-of-fold validated; more accurate in docs/benchmarks.md); "
                         "trained = the heads trained by gradient with the network (their gradient then trains the "
                         "encoder too unless --heads_train_encoder false)")
    add_knob_arguments(tr)  # --epochs --lr --patience ...: one line each in nnunet_mtl/training/knobs.py

    inf = p.add_argument_group("inference")
    inf.add_argument("--model_dir", help="--inference_only: predict with this model folder (one of --add_heads / "
                                         "nnunet_mtl_add_heads, or trained elsewhere; default: the model trained in "
                                         "BASE_DIR); --add_heads: the model folder to write")
    inf.add_argument("--stock_model", help="--add_heads: the trained nnU-Net model folder "
                                           "(.../DatasetXXX_Name/TRAINER__PLANS__CONFIGURATION)")
    inf.add_argument("--test_input", help="folder of test images (default: the dataset's imagesTs)")
    inf.add_argument("--test_output", help="output folder (default: BASE_DIR/predictions)")
    inf.add_argument("--checkpoint", default="checkpoint_final.pth")
    inf.add_argument("--step_size", type=float, default=0.5)
    inf.add_argument("--disable_tta", action="store_true", help="no test-time mirroring")
    add_backend_argument(inf)
    add_engine_arguments(inf)
    inf.add_argument("--explain", action="store_true", help="also write Grad-CAM maps and overlays")
    inf.add_argument("--save_probabilities", action="store_true")
    inf.add_argument("--mask_format", default="input", choices=["input", "nifti"],
                     help="input: masks of PNG/JPG/BMP/TIFF inputs as PNG, label values as pixel values (default); "
                          "nifti: every mask in the model's format (DICOM and NIfTI inputs always are)")
    inf.add_argument("--no_calibration", action="store_true",
                     help="raw probabilities even when the folds have calibration.json (temperature scaling)")
    inf.add_argument("--dicom_outputs", nargs="?", const="binary", choices=["binary", "fractional"],
                     help="DICOM SEG + SR under TEST_OUTPUT/dicom/<case>/ for DICOM inputs (default binary SEG; "
                          "fractional: probabilities, implies --save_probabilities)")
    inf.add_argument("--report", action="store_true",
                     help="review pages TEST_OUTPUT/report/index.html + cases/ (Grad-CAM with --explain)")
    add_review_arguments(inf)

    p.add_argument("--overwrite", action="store_true",
                   help="redo finished steps (re-convert, re-plan, retrain, re-predict) instead of skipping them")
    p.add_argument("--num_processes", type=int, default=2, help="processes for preprocessing")
    return p



def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("nnUNet_n_proc_DA", "0" if (os.cpu_count() or 1) <= 2 else str(min(12, os.cpu_count())))
    os.environ.setdefault("nnUNet_def_n_proc", "2")
    device = args.device or _default_device()
    base_given = args.base_dir is not None
    args.base_dir = args.base_dir or DEFAULT_BASE_DIR
    return run_command(parser.prog, lambda: _run(args, device, base_given))


def _run(args, device: str, base_given: bool) -> int:
    from nnunet_mtl import workflow  # after main's settings: nnU-Net reads them when it is first imported
    if args.demo:
        return run_demo(args, device)
    run_all = not (args.prepare_only or args.train_only or args.inference_only or args.add_heads)
    engine = engine_kwargs(args)  # before any step: a Ray option without --engine ray, or Ray missing, is one line
    if args.add_heads:
        if not (args.stock_model and args.model_dir):
            raise workflow.PipelineError("--add_heads needs --stock_model (the trained nnU-Net model) and "
                                         "--model_dir (the model folder to write)")
        stock_base = args.base_dir if base_given or not os.environ.get("nnUNet_preprocessed") else None
        workflow.add_heads(stock_base, args.stock_model, args.model_dir, args.labels_csv, args.spec_json,
                           device, args.overwrite, folds=args.fold, checkpoint=args.checkpoint,
                           backend=args.backend)
    if args.prepare_only or run_all:
        if not args.input_dir:
            raise workflow.PipelineError("--input_dir is required to prepare a dataset (or use --demo)")
        workflow.prepare(args.base_dir, args.input_dir, args.dataset_id, args.dataset_name, args.planner,
                         args.configuration, args.trainer, args.split_mode, args.folds, args.split_target,
                         args.seed, args.num_processes, args.overwrite, shrink=_shrink(args),
                         convert_kwargs=_convert_kwargs(args))
    if args.train_only or run_all:
        knobs = _training_knobs(args)
        on_ray = engine if engine["engine"] == "ray" else {}  # each fold a Ray task; heads fitted here after all
        workflow.train(args.base_dir, args.fold, device, args.num_gpus, args.overwrite, **on_ray, **knobs)
        if args.heads == "fitted":
            workflow.fit_heads(args.base_dir, args.fold, device, args.overwrite, backend=args.backend)
    if args.inference_only or run_all:
        workflow.infer(args.base_dir, args.test_input, args.test_output, args.fold, args.checkpoint, device,
                       args.overwrite, args.explain, step_size=args.step_size, use_mirroring=not args.disable_tta,
                       save_probabilities=args.save_probabilities, calibration=not args.no_calibration,
                       dicom_outputs=args.dicom_outputs, report=args.report, mask_format=args.mask_format,
                       model_dir=args.model_dir, heads=args.heads, backend=args.backend, coverage=args.coverage,
                       interval_tolerance=interval_tolerances(args.interval_tolerance), **engine)
    return 0


def _training_knobs(args, budget=None) -> dict:
    """The knobs the command line sets (``--recipe``, then ``budget``, then explicit flags); with ``--heads
    trained`` (the trained heads' predictions are the output) the heads' gradient also trains the encoder unless
    ``--heads_train_encoder`` (or the recipe) says otherwise."""
    knobs = knobs_from_args(args, budget)
    if args.heads == "trained":
        knobs.setdefault("heads_train_encoder", True)
    return knobs


def _shrink(args):
    """Plan overrides, or None to keep nnU-Net's plans untouched."""
    given = {k: getattr(args, k) for k in ("max_features", "batch_size", "patch_size", "n_stages")
             if getattr(args, k) is not None}
    if not given:
        return None
    return given


def _convert_kwargs(args) -> dict:
    kw = dict(layout=args.layout, labels_csv=args.labels_csv, spec_json=args.spec_json, masks_dir=args.masks_dir,
              grey=args.grey, description=description_from_args(args),
              test_dir=args.test_dir, patient_column=args.patient_column, clip_percentiles=tuple(args.clip_percentiles))
    if args.target_spacing:
        kw["target_spacing"] = tuple(args.target_spacing)
    return kw


def _default_device() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def run_demo(args, device: str) -> int:
    """Synthetic data in a user-facing layout, then every step with a short budget."""
    from nnunet_mtl import synthetic, workflow  # after main's nnU-Net settings
    engine = engine_kwargs(args)  # checked before the demo trains
    start = time.time()
    kind = args.demo
    input_dir = os.path.join(args.base_dir, f"demo_input_{kind}")
    if not os.path.isdir(input_dir):
        if kind == "3d":
            synthetic.write_pancreas_layout(input_dir, n_train=18, n_val=6, n_test=6, shape=(24, 40, 40))
        else:
            synthetic.write_radiograph_layout(input_dir, n=30, n_test=6, size=(64, 64))
    print(f"[demo] synthetic {kind} data in {input_dir}")
    dataset_id = 990 if kind == "3d" else 991
    convert_kwargs = {"labels": synthetic.radiograph_labels(False)} if kind == "2d" else None
    workflow.prepare(args.base_dir, input_dir, dataset_id, f"Demo{kind.upper()}", args.planner, None, args.trainer,
                     None, 5, None, args.seed, args.num_processes, args.overwrite, shrink=DEMO_SHRINK[kind],
                     convert_kwargs=convert_kwargs)
    knobs = _training_knobs(args, DEMO_BUDGET)  # the demo's short budget wins over a --recipe's
    workflow.train(args.base_dir, [0], device, 1, args.overwrite, **knobs)
    if args.heads == "fitted":  # the pipeline's default path: heads fitted on the trained model's features
        workflow.fit_heads(args.base_dir, [0], device, args.overwrite, backend=args.backend)
    csv_path = workflow.infer(args.base_dir, None, args.test_output, [0], device=device, overwrite=args.overwrite,
                              explain=args.explain, heads=args.heads, backend=args.backend, **engine)
    metrics = workflow.evaluate_validation(args.base_dir, 0, n_bootstrap=200)
    print(f"[demo] test predictions: {csv_path}")
    print(f"[demo] validation report: {os.path.join(args.base_dir, 'evaluation_fold0')}")
    _print_headline(metrics)
    print(f"[demo] finished in {time.time() - start:.0f} s")
    return 0


def _print_headline(metrics: dict) -> None:
    from nnunet_mtl.evaluation.summary import summary_lines  # after main's nnU-Net settings
    print("[demo] whole validation cases:")
    for line in summary_lines(metrics):
        print(f"[demo]   {line}")


if __name__ == "__main__":
    sys.exit(main())
