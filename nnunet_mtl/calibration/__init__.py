"""Calibrated probabilities: temperature scaling per classification target, calibration metrics.

- ``temperature``: fit one temperature per target on whole validation cases; apply it.
- ``store``: ``fold_X/calibration.json`` next to a checkpoint; load and apply over folds.
- ``measures``: ECE, Brier score, stratified bootstrap CIs.
- ``reliability``: the reliability diagram (matplotlib ``Figure`` API, no global backend).
- ``evaluation``: the per-target calibration block and diagram for the evaluation folder.
"""
