"""nnunet_mtl_classify MODEL_DIR FILE [FILE ...]: one line per file: name, class, probability, seconds."""
import argparse
import sys
import tempfile

from nnunet_mtl.cli.aggregation_args import add_aggregation_arguments


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("model", help="trained model folder")
    p.add_argument("files", nargs="+", help="PNG/JPG/DICOM/NIfTI images")
    p.add_argument("--target", default=None, help="classification target to print (default: the first)")
    p.add_argument("-f", "--folds", nargs="+", default=None)
    p.add_argument("-chk", "--checkpoint", default="checkpoint_final.pth")
    p.add_argument("-device", "--device", default="cpu", choices=["cuda", "cpu", "mps"])
    p.add_argument("--disable_tta", action="store_true")
    add_aggregation_arguments(p)
    args = p.parse_args(argv)
    from nnunet_mtl.inference import classify_files, load_predictor
    try:
        predictor = load_predictor(args.model, args.folds, args.checkpoint, args.device,
                                   use_mirroring=not args.disable_tta, aggregation=args.aggregation,
                                   foreground_floor=args.foreground_floor)
        spec = predictor.spec
        targets = spec.classification_targets
        if not targets:
            raise ValueError(f"{args.model}: the model has no classification target")
        target = spec[args.target] if args.target else targets[0]
        with tempfile.TemporaryDirectory() as work:
            for r in classify_files(predictor, args.files, work):
                probs = r["outputs"][target.name]
                k = int(probs.argmax())
                print(f"{r['file']}\t{target.classes[k]}\t{probs[k]:.4f}\t{r['seconds']:.2f}s", flush=True)
    except KeyError as e:
        print(f"nnunet_mtl_classify: error: unknown target {e}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as e:
        print(f"nnunet_mtl_classify: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
