"""Beyond one machine, on Ray (an optional extra): joining the cluster and reading a worker's failure
(``session``); the inference actors live in ``inference.ray_engine``, the fold tasks in ``training.fold_runs``."""
