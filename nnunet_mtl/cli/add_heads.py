"""nnunet_mtl_add_heads: image-level heads fitted on an nnU-Net model that is already trained (its weights unchanged).

  nnunet_mtl_add_heads -m MODEL_DIR --labels_csv L [--spec_json S] -o OUT_MODEL_DIR
      per fold of the model's own split: pooled encoder features of every case (cached), a linear
      read-out fitted on the fold's training cases and written into the fold's checkpoint as its heads,
      out-of-fold predictions of its validation cases. OUT_MODEL_DIR is a model folder of nnunet_mtl
      (the model's weights plus the heads); -o MODEL_DIR fits the heads of one of our models in place.
  nnunet_mtl_predict -m OUT_MODEL_DIR -i IMAGES -o OUT
      masks as the model gives them (as nnUNetv2_predict) and predictions.csv from the heads, with every
      option of nnunet_mtl_predict (``nnunet_mtl_add_heads predict ...`` is the same command)
"""
import argparse
import sys

from nnunet_mtl.cli import predict
from nnunet_mtl.cli.backend_args import add_backend_argument
from nnunet_mtl.commands.failures import run_command
from nnunet_mtl.planning import add_trainer_path
from nnunet_mtl.targets import load_spec_file
from nnunet_mtl.model.pooling import POOLS
from nnunet_mtl.training.fitting import FIT_POOLS, fit_heads


def _device_default() -> str:
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nnunet_mtl_add_heads", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-m", "--model", required=True, help="trained nnU-Net model folder (TRAINER__PLANS__CONFIGURATION)")
    p.add_argument("-o", "--output", required=True,
                   help="model folder to write (made if missing; the model's own folder: its heads, in place)")
    p.add_argument("--labels_csv", default=None, help="case_id + one column per target (default: the mtl block "
                                                      "of the model's dataset.json)")
    p.add_argument("--spec_json", default=None, help="target spec (kinds, classes) for the labels CSV")
    p.add_argument("-f", "--folds", nargs="+", type=int, default=None, help="folds (default: every trained fold)")
    p.add_argument("--splits", default=None, help="splits_final.json (default: the dataset's in nnUNet_preprocessed)")
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    p.add_argument("--cache_dir", default=None, help="pooled-feature cache (default: OUTPUT/feature_cache)")
    p.add_argument("--stages", nargs="+", type=int, default=None,
                   help="encoder stages to pool (0 = first, -1 = bottleneck; default: all)")
    p.add_argument("--pools", nargs="+", default=list(FIT_POOLS), choices=list(POOLS),
                   help=f"what the heads read: per stage the global and foreground pools; measures: the predicted "
                        f"structures' volume and intensity statistics (default: {' '.join(FIT_POOLS)})")
    p.add_argument("--all_pools", action="store_true",
                   help="every target reads all --pools (default: each target reads the combination of them that "
                        "cross-validation on the training cases scores best)")
    p.add_argument("-device", "--device", default=None, choices=["cuda", "cpu", "mps"])
    add_backend_argument(p)
    p.add_argument("--overwrite", action="store_true",
                   help="fit again even when OUTPUT holds heads fitted from the same inputs (they are kept otherwise)")
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["predict"]:  # kept as an alias: the output is a model folder of nnunet_mtl_predict
        return predict.main(argv[1:])
    add_trainer_path()  # the model may be one of ours, or any trainer nnU-Net finds
    args = build_parser().parse_args(argv)
    return run_command("nnunet_mtl_add_heads", lambda: _run(args))


def _run(args) -> int:
    spec = load_spec_file(args.spec_json) if args.spec_json else None
    summary = fit_heads(args.model, args.output, args.labels_csv, spec, args.folds, args.splits, args.checkpoint,
                        args.device or _device_default(), args.backend, args.cache_dir, args.stages, args.pools,
                        overwrite=args.overwrite, select_pools=not args.all_pools)
    print(f"out-of-fold validation: {summary.get('headline', summary)}")
    print(f"model with fitted heads: {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
