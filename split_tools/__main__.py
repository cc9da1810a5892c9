"""``python -m split_tools ...``: the split command; the code is nnunet_mtl/cli/split.py."""
import sys

from nnunet_mtl.cli.split import main

if __name__ == "__main__":
    sys.exit(main())
