"""A fold that the split does not have is an error, not a random split.

nnU-Net's ``do_split`` answers a fold beyond ``splits_final.json`` with a log line and a random
80:20 split of all cases, which then trains, validates and gets ensembled like a real fold (a patient
may sit on both sides). The MTL trainers call this first, so stock ``nnUNetv2_train`` refuses it too.
"""
from __future__ import annotations

import json
import os


def check_fold_in_splits(fold, splits_file: str) -> None:
    """Raise ``ValueError`` (one line naming the file and its number of folds) when ``fold`` is a
    number not below the number of splits in an existing ``splits_file``. Fold 'all' and a missing file
    (nnU-Net then writes its 5-fold split) are nnU-Net's business."""
    if fold == "all" or not os.path.isfile(splits_file):
        return
    try:
        with open(splits_file) as f:
            n = len(json.load(f))
    except (OSError, ValueError, TypeError) as e:
        raise ValueError(f"{splits_file}: cannot read the split ({e})") from None
    if int(fold) >= n or int(fold) < 0:
        raise ValueError(f"{splits_file}: fold {fold} does not exist; this split has {n} fold(s) "
                         f"(0..{n - 1}); nnU-Net would train a random 80:20 split instead")
