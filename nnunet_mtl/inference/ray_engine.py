"""Cluster engine: a folder's cases on Ray Data actors, so one prediction runs beyond one machine.

Only the per-case work moves (read, preprocess, network, export into the staging folder); the driver keeps
what every engine shares (``folders.predict_folder``: listing, checks, resume, the record, the lock). Each actor
loads the model once from its folder (``load_predictor`` with the driver's settings: a predictor does not
travel) and runs the threads engine (``threaded_engine.run_cases``) on its cases; head outputs stream back and
go to the same ``on_case_done`` the threads engine calls. The model, the inputs and the output folder must be on
storage every node sees at the same path.
"""
from __future__ import annotations

import os
import pickle
from typing import Callable, Iterator, List, Optional, Sequence

import numpy as np

from nnunet_mtl.inference.file_heads import heads_of_files
from nnunet_mtl.inference.predictor import CaseHeads
from nnunet_mtl.cluster.session import connected, failure_line



def worker_settings(predictor) -> dict:
    """``load_predictor`` arguments that rebuild ``predictor`` on a worker: its model folder, folds, checkpoint,
    device type and the settings that change results (step size, mirroring, tile batch, backend)."""
    files = getattr(predictor, "checkpoint_files", None)
    if not files:
        raise ValueError("engine 'ray' needs a predictor loaded from a model folder (load_predictor)")
    fold_dirs = [os.path.dirname(os.path.abspath(f)) for f in files]
    folds = [os.path.basename(d)[len("fold_"):] for d in fold_dirs]
    return {"model_dir": os.path.dirname(fold_dirs[0]), "folds": folds, "checkpoint": os.path.basename(files[0]),
            "device": predictor.device.type, "step_size": float(predictor.tile_step_size),
            "use_mirroring": bool(predictor.use_mirroring), "tile_batch": int(predictor.tile_batch),
            "backend": predictor.backend}


def node_name() -> str:
    import socket
    return socket.gethostname()


def load_on_worker(settings: dict):
    """The predictor rebuilt on a worker; the loader's own one-line check of the model folder, with the node
    named (the folder must be on storage every node sees)."""
    from nnunet_mtl.inference.loader import ModelFolderError, load_predictor
    try:
        return load_predictor(**settings)
    except ModelFolderError as e:
        raise FileNotFoundError(f"{e} on Ray worker node {node_name()}; the model folder must be on storage every "
                                f"node sees at the same path") from None


class CaseActor:
    """One Ray actor: the model loaded once, then ``run_cases`` on each batch of cases."""

    def __init__(self, settings: dict, save_probabilities: bool, preprocess_threads: int, export_threads: int):
        self.predictor = load_on_worker(settings)
        self.options = dict(save_probabilities=save_probabilities, preprocess_threads=preprocess_threads,
                            export_threads=export_threads)

    def __call__(self, batch: dict) -> dict:
        from nnunet_mtl.inference.threaded_engine import run_cases
        ofiles = [str(f) for f in batch["ofile"]]
        lists = [[str(p) for p in files] for files in batch["files"]]
        heads = run_cases(self.predictor, lists, ofiles, **self.options)
        return {"ofile": np.array(ofiles), "heads": np.array([pickle.dumps(h) for h in heads], dtype=object)}


class FilesActor:
    """One Ray actor for ``classify_files``: the model loaded once (its heads pass), then the raw head outputs of
    each batch of files (``file_heads.heads_of_files``), converted in a folder of the worker's own."""

    def __init__(self, settings: dict, clip_percentiles):
        self.predictor = load_on_worker({**settings, "prepare": "heads"})
        self.clip_percentiles = tuple(clip_percentiles)

    def __call__(self, batch: dict) -> dict:
        import tempfile
        with tempfile.TemporaryDirectory() as work:
            results = list(heads_of_files(self.predictor, [str(f) for f in batch["file"]], work,
                                          self.clip_percentiles))
        return {"result": np.array([pickle.dumps(r) for r in results], dtype=object)}


def run_cases(predictor, input_lists: Sequence[List[str]], output_files: Sequence[str],
              save_probabilities: bool = False, export_threads: int = 2, preprocess_threads: int = 2,
              on_case_done: Optional[Callable[[str, CaseHeads], None]] = None,
              address: Optional[str] = None, workers: Optional[int] = None) -> None:
    """``threaded_engine.run_cases`` over Ray: ``workers`` actors (default one per GPU of the cluster when the
    predictor is on CUDA, else one), each with one GPU (CUDA) or one CPU; ``on_case_done(ofile, heads)`` runs
    in the caller as each case comes back. ``address``: a running cluster to join (default: the one this process
    is connected to, else ``ray.init``'s: RAY_ADDRESS or a new local one, shut down again at the end)."""
    items = [{"ofile": o, "files": list(f)} for f, o in zip(input_lists, output_files)]
    for row in _on_actors(predictor, items, CaseActor, (save_probabilities, preprocess_threads, export_threads),
                          address, workers):
        if on_case_done is not None:
            on_case_done(str(row["ofile"]), pickle.loads(row["heads"]))


def classify_files(predictor, files: Sequence[str], clip_percentiles=(0.5, 98.5), address: Optional[str] = None,
                   workers: Optional[int] = None) -> Iterator[dict]:
    """``file_heads.heads_of_files`` over Ray actors (as ``run_cases``): each file's raw head outputs, or its error
    line, yielded as it comes back."""
    items = [{"file": str(f)} for f in files]
    for row in _on_actors(predictor, items, FilesActor, (tuple(clip_percentiles),), address, workers):
        yield pickle.loads(row["result"])


def _on_actors(predictor, items: List[dict], actor, actor_args: tuple, address: Optional[str],
               workers: Optional[int]) -> Iterator[dict]:
    """``items`` one at a time through ``workers`` actors of class ``actor`` (each rebuilding ``predictor``), the
    rows yielded as they come back; a worker's failure as one line (RuntimeError), not Ray's traceback."""
    with connected(address) as ray:
        settings = worker_settings(predictor)
        gpu = settings["device"] == "cuda"
        if workers is None:
            workers = max(1, int(ray.cluster_resources().get("GPU", 0))) if gpu else 1
        if workers < 1:
            raise ValueError(f"--ray_workers must be >= 1, got {workers}")
        if not items:
            return
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the driver's own progress line says which case finished
        resources = {"num_gpus": 1} if gpu else {"num_cpus": 1}
        pool = ray.data.ActorPoolStrategy(size=min(workers, len(items)))  # a fixed pool: each loads the model once
        results = ray.data.from_items(items).map_batches(actor, batch_size=1, compute=pool, batch_format="numpy",
                                                         fn_constructor_args=(settings, *actor_args), **resources)
        try:
            yield from results.iter_rows()
        except ray.exceptions.RayError as e:
            raise RuntimeError(f"on a Ray worker: {failure_line(e)}") from None
