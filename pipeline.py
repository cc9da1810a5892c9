"""``python pipeline.py ...``: the pipeline command; the code is nnunet_mtl/cli/pipeline.py (nnunet_mtl_pipeline)."""
import sys

from nnunet_mtl.cli.pipeline import main

if __name__ == "__main__":
    sys.exit(main())
