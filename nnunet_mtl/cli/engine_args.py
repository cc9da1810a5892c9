"""``--engine`` (threads | processes | ray) with Ray's ``--address`` and ``--ray_workers``: the same options in
every CLI that predicts (predict, classify, pipeline), turned into the engine's arguments in one place."""
import argparse

from nnunet_mtl.cluster import session as ray_cluster
from nnunet_mtl.inference.folders import ENGINES


def add_engine_arguments(p, choices=ENGINES) -> None:
    p.add_argument("--engine", default="threads", choices=list(choices),
                   help="threads: in-process pipeline, no worker start-up (default); processes: nnU-Net's workers; "
                        f"ray: cases on Ray actors, on one machine or a cluster, and in pipeline.py's training each fold "
                        f"as a Ray task with its own GPU ({ray_cluster.INSTALL_HINT})")
    p.add_argument("--address", default=None,
                   help="--engine ray: the running Ray cluster to join (e.g. ray://HEAD:10001 or HEAD:6379; model, "
                        "inputs and output on storage every node shares); default: RAY_ADDRESS, else a local one")
    p.add_argument("--ray_workers", type=int, default=None,
                   help="--engine ray: actors predicting side by side (default: one per GPU of the cluster with "
                        "-device cuda, else one); in training on CPUs, folds at a time (default: all, sharing the "
                        "cluster's CPUs)")


def engine_kwargs(args: argparse.Namespace) -> dict:
    """``predict_folder`` keywords; one line (ValueError/RuntimeError) for Ray options without ``--engine ray``,
    fewer than one worker, or Ray not installed, before any model is loaded."""
    if args.engine != "ray":
        if args.address is not None or args.ray_workers is not None:
            raise ValueError(f"--address and --ray_workers are for --engine ray, not --engine {args.engine}")
        return {"engine": args.engine}
    if args.ray_workers is not None and args.ray_workers < 1:
        raise ValueError(f"--ray_workers must be >= 1, got {args.ray_workers}")
    ray_cluster.require_ray()
    return {"engine": "ray", "ray_address": args.address, "ray_workers": args.ray_workers}
