"""nnunet_mtl_explain: Grad-CAM maps (NIfTI + PNG overlays) of one case for one image-level target.

    nnunet_mtl_explain -m MODEL_DIR -i CASE_0000.nii.gz [CASE_0001.nii.gz ...] -o OUT --target T
                       [--class C] [--method gradcam|gradcam++|hirescam] [--stage -1] [-f 0 1] [-chk ...]
"""
import argparse
import os
import sys

from nnunet_mtl.conversion.file_names import case_name
from nnunet_mtl.commands.failures import run_command


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnunet_mtl_explain", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True,
                   help="model folder (holds plans.json and fold_X): trained, or made by nnunet_mtl_add_heads")
    p.add_argument("-i", "--input", nargs="+", required=True,
                   help="the case's image files, one per input channel, in channel order")
    p.add_argument("-o", "--output", required=True, help="output folder")
    p.add_argument("--target", required=True, help="image-level target to explain")
    p.add_argument("--class", dest="class_name", default=None,
                   help="class name (or index) to explain (default: the predicted class)")
    p.add_argument("--method", default="gradcam", choices=["gradcam", "gradcam++", "hirescam"])
    p.add_argument("--stage", type=int, default=None,
                   help="encoder stage (int, negative from the deepest; default: deepest stage the head reads)")
    p.add_argument("--mask", default=None, help="mask file for the outline (default: the predicted segmentation)")
    p.add_argument("--top_k", type=int, default=3, help="3D: slices shown in the overlay (default 3)")
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds to average (default: all found)")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    p.add_argument("-device", "--device", default="cpu", choices=["cuda", "cpu", "mps"])
    p.add_argument("--disable_tta", action="store_true", help="no mirroring, for the prediction and the map")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_command("nnunet_mtl_explain", lambda: _run(args))


def _run(args) -> int:
    from nnunet_mtl.outputs.explain import explain_case  # grad-cam: imported on use
    paths = explain_case(args.model, args.input, os.path.join(args.output, case_name(args.input[0])),
                         args.target, class_name=args.class_name, method=args.method, stage=args.stage,
                         folds=args.folds, checkpoint=args.checkpoint, device=args.device, mask_file=args.mask,
                         top_k=args.top_k, use_mirroring=not args.disable_tta)
    for kind, path in paths.items():
        print(f"{kind}\t{path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
