"""Target-aware cross-validation splits for nnU-Net (``python -m split_tools --help``)."""
