"""nnunet_mtl_predict: masks + per-case head predictions (CSV/JSON) from a trained model folder."""
import argparse
import contextlib
import sys

from nnunet_mtl.cli.backend_args import add_backend_argument
from nnunet_mtl.cli.engine_args import add_engine_arguments, engine_kwargs
from nnunet_mtl.commands.failures import run_command
from nnunet_mtl.cli.review_args import add_review_arguments, interval_tolerances
from nnunet_mtl.inference.folders import converted_source, predict_folder
from nnunet_mtl.inference.loader import load_predictor
from nnunet_mtl.outputs import clinical as clinical_outputs


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnunet_mtl_predict", description=__doc__)
    p.add_argument("-i", "--input", required=True, help="folder of images (nnU-Net CASE_0000.nii.gz, or PNG/JPG/"
                                                        "DICOM/NIfTI files, or DICOM series folders)")
    p.add_argument("-o", "--output", required=True, help="output folder for masks and predictions.csv")
    p.add_argument("-m", "--model", required=True,
                   help="model folder (holds plans.json and fold_X): trained, or made by nnunet_mtl_add_heads")
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds to ensemble (default: all found)")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    p.add_argument("-step_size", "--step_size", type=float, default=0.5, help="sliding-window step (default 0.5)")
    p.add_argument("--disable_tta", action="store_true", help="no mirroring at test time (slower nets, lower accuracy)")
    p.add_argument("--tile_batch", type=int, default=None,
                   help="network inputs (tiles x mirrors) per forward (default 1: nnU-Net's own loop); larger "
                        "values batch tiles and their mirrored copies: more memory, same results to 1e-5")
    p.add_argument("-device", "--device", default="cuda" if _cuda() else "cpu", choices=["cuda", "cpu", "mps"])
    add_backend_argument(p)
    p.add_argument("-npp", type=int, default=2, help="processes for preprocessing")
    p.add_argument("-nps", type=int, default=2, help="processes for resampling/export")
    p.add_argument("--save_probabilities", action="store_true", help="also write probability maps (.npz)")
    p.add_argument("--overwrite", action="store_true", help="re-predict cases that already have a mask")
    p.add_argument("-num_parts", type=int, default=1, help="split the cases over this many processes/GPUs")
    p.add_argument("-part_id", type=int, default=0, help="which part this process predicts (0-based)")
    add_engine_arguments(p)
    p.add_argument("--mask_format", default="input", choices=["input", "nifti"],
                   help="input: masks of PNG/JPG/BMP/TIFF inputs as PNG, label values as pixel values (default); "
                        "nifti: every mask in the model's format (DICOM and NIfTI inputs always are)")
    p.add_argument("--no_calibration", action="store_true",
                   help="raw probabilities even when the folds have calibration.json (temperature scaling); "
                        "no conformal sets then")
    add_review_arguments(p)
    p.add_argument("--dicom_outputs", nargs="?", const="binary", choices=["binary", "fractional"],
                   help="DICOM SEG + SR under OUTPUT/dicom/<case>/ for DICOM inputs (default binary SEG; "
                        "fractional: probabilities, implies --save_probabilities)")
    p.add_argument("--report", action="store_true", help="review pages OUTPUT/report/index.html + cases/")
    p.add_argument("--verbose", action="store_true")
    return p


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.num_parts < 1 or not 0 <= args.part_id < args.num_parts:
        parser.error(f"-part_id {args.part_id} is outside -num_parts {args.num_parts} "
                     f"(part ids are 0 to {args.num_parts - 1})")
    return run_command("nnunet_mtl_predict", lambda: _run(args))


def _run(args) -> int:
    engine = engine_kwargs(args)  # a Ray option without --engine ray, or Ray missing: one line, no model loaded
    predictor = load_predictor(args.model, args.folds, args.checkpoint, args.device, args.step_size,
                               not args.disable_tta, args.verbose, tile_batch=args.tile_batch,
                               backend=args.backend)
    if args.no_calibration:
        predictor.calibration = None
    with contextlib.closing(predictor):
        predictor.set_review(args.coverage, interval_tolerances(args.interval_tolerance), not args.no_calibration)
        csv_path = predict_folder(predictor, args.input, args.output, overwrite=args.overwrite,
                                  save_probabilities=args.save_probabilities or args.dicom_outputs == "fractional",
                                  num_processes_preprocessing=args.npp, num_processes_export=args.nps,
                                  num_parts=args.num_parts, part_id=args.part_id,
                                  mask_format=args.mask_format, **engine)
    clinical_outputs.retire_unrequested(args.output, {clinical_outputs.DICOM_DIR: bool(args.dicom_outputs),
                                                      clinical_outputs.REPORT_DIR: args.report})
    if args.dicom_outputs:
        clinical_outputs.write_dicom_folder(args.model, args.output, args.dicom_outputs)
    if args.report:
        clinical_outputs.write_report_folder(args.model, args.output, converted_source(args.input, args.output))
    print(f"predictions: {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
