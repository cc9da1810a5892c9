"""nnunet_mtl_classify -m MODEL_DIR FILE [FILE ...]: one line per file as it finishes: name, class,
probability, seconds, and where the folds have conformal.json the target's prediction set (``set=a|b``) and
``needs_review=yes|no``, where they have the input checks' files ``ood_score=X`` and ``ood_flag=yes|no`` (a
flagged file also gets one warning line on stderr); or name, ERROR and the reason (the other files go on; exit
code 1 at the end).
Only these lines go to stdout; nnU-Net's messages go to stderr. Only the heads are needed, so each tile runs
once (no mirrors, no logits stitched; no decoder where no head reads the segmentation): the probabilities
are those nnunet_mtl_predict writes for the same image and model (``predict_heads``). ``--engine ray``: the files
on Ray actors, on this machine or a cluster (lines in the order the files finish)."""
import argparse
import contextlib
import sys
import tempfile

from nnunet_mtl import case_checks
from nnunet_mtl.cli.backend_args import add_backend_argument
from nnunet_mtl.cli.engine_args import add_engine_arguments, engine_kwargs
from nnunet_mtl.commands.failures import run_command
from nnunet_mtl.cli.review_args import add_review_arguments, interval_tolerances
from nnunet_mtl.inference.folders import classify_files
from nnunet_mtl.inference.loader import load_predictor
from nnunet_mtl.prediction_table import REVIEW_COLUMN, set_column

PROG = "nnunet_mtl_classify"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__)
    p.add_argument("-m", "--model", default=None, help="trained model folder (holds plans.json and fold_X)")
    p.add_argument("files", nargs="+", help="PNG/JPG/BMP/TIFF/DICOM/NIfTI images")
    p.add_argument("--target", default=None, help="classification target to print (default: the first)")
    p.add_argument("-f", "--folds", nargs="+", default=None)
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    p.add_argument("-device", "--device", default="cpu", choices=["cuda", "cpu", "mps"])
    p.add_argument("--tile_batch", type=int, default=None,
                   help="tiles per forward (default 1; see nnunet_mtl/inference/tiling.py)")
    add_backend_argument(p)
    add_engine_arguments(p, choices=("threads", "ray"))
    add_review_arguments(p)
    return p


def main(argv=None) -> int:
    p = build_parser()
    args = p.parse_args(argv)
    if args.model is None:  # the old form: MODEL_DIR FILE [FILE ...]
        if len(args.files) < 2:
            p.error("give the model with -m MODEL_DIR")
        args.model, args.files = args.files[0], args.files[1:]
        print(f"{PROG}: the model as first argument is deprecated; use -m {args.model}", file=sys.stderr)
    return run_command(PROG, lambda: _run(args))


def _run(args) -> int:
    engine = engine_kwargs(args)  # a Ray option without --engine ray, or Ray missing: one line, before loading
    with contextlib.redirect_stdout(sys.stderr):
        predictor = load_predictor(args.model, args.folds, args.checkpoint, args.device,
                                   tile_batch=args.tile_batch, backend=args.backend, prepare="heads")
    with contextlib.closing(predictor), tempfile.TemporaryDirectory() as work:  # closed on every way out
        target = _target(predictor.spec, args)
        predictor.set_review(args.coverage, interval_tolerances(args.interval_tolerance))
        failed = 0
        for r in classify_files(predictor, args.files, work, chatter=sys.stderr, **engine):
            if "error" in r:
                failed += 1
                print(f"{r['file']}\tERROR\t{r['error']}", flush=True)
                continue
            probs = r["outputs"][target.name]
            k = int(probs.argmax())
            review = r["review"]
            extra = (f"\tset={review[set_column(target.name)]}\t{REVIEW_COLUMN}={review[REVIEW_COLUMN]}"
                     if set_column(target.name) in review else "")
            checks = case_checks.columns_of(r["outputs"])  # ood_score and its flag, where the folds have the files
            extra += "".join(f"\t{c}={checks[c]}" for c in (case_checks.OOD_SCORE, case_checks.OOD_FLAG) if c in checks)
            print(f"{r['file']}\t{target.classes[k]}\t{probs[k]:.4f}\t{r['seconds']:.2f}s{extra}", flush=True)
            flagged = case_checks.warning(r["file"], r["outputs"])
            if flagged:
                print(flagged, file=sys.stderr, flush=True)
    if failed:
        print(f"{PROG}: {failed} of {len(args.files)} file(s) failed", file=sys.stderr)
        return 1
    return 0


def _target(spec, args):
    targets = spec.classification_targets
    if not targets:
        raise ValueError(f"{args.model}: the model has no classification target")
    if args.target and args.target not in [t.name for t in targets]:
        raise ValueError(f"unknown classification target {args.target!r} (the model has "
                         f"{', '.join(t.name for t in targets)})")
    return spec[args.target] if args.target else targets[0]


if __name__ == "__main__":
    sys.exit(main())
