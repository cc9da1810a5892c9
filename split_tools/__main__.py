"""``python -m split_tools ...``: the split command (split_tools/cli.py)."""
import sys

from split_tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
