"""``python evaluation.py ...``: the evaluation command; the code is nnunet_mtl/cli/evaluate.py (nnunet_mtl_evaluate)."""
import sys

from nnunet_mtl.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
