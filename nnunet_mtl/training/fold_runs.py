"""One fold's nnU-Net training, in this process or as a Ray task (``pipeline.py --train_only --engine ray``).

Each fold is one task that asks the cluster for a GPU (``num_gpus`` of them for nnU-Net's DDP) or, on a CPU
cluster, a share of its CPUs; it trains with nnU-Net's ``run_training`` into the shared ``nnUNet_results`` and
writes its output to ``fold_X/ray_train.log``. A task whose worker dies (a lost node, a killed process) is run
again by Ray and continues from the fold's newest checkpoint, also under ``--overwrite``: the first attempt
leaves a token in the fold folder, a retry that finds it resumes. The driver waits for all folds, says per fold
what happened and fails in one line naming each failed fold's log.
"""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from dataclasses import dataclass, replace
from typing import Callable, Dict, List, Optional, Sequence

from nnunet_mtl.io_utils import atomic_write_text
from nnunet_mtl.cluster.session import connected, failure_line
from nnunet_mtl.training.knobs import ENV_VAR, encode_overrides

RAY_LOG = "ray_train.log"
ATTEMPT_TOKEN = ".ray_fold_attempt"
RETRIES = 2  # re-runs of a fold whose worker died (Ray's system failures; a Python error is not retried)


class FoldRunError(RuntimeError):
    """One or more folds failed; the message names each one's log."""


@dataclass(frozen=True)
class FoldRun:
    """What nnU-Net needs to train (or only validate) one fold, and where its folder is."""
    dataset_id: int
    configuration: str
    trainer: str
    plans: str
    fold: int
    fold_dir: str
    resume: bool = False
    validation_only: bool = False


def run_fold(run: FoldRun, device: str, num_gpus: int = 1) -> None:
    """nnU-Net's training of one fold in this process (``validation_only``: its final validation alone, nnU-Net's
    ``--val``); with several GPUs nnU-Net's own DDP launcher in a child process. Knobs come from the environment
    (``NNUNET_MTL_OVERRIDES``), as under ``nnUNetv2_train``."""
    if num_gpus > 1:
        cmd = [sys.executable, "-m", "nnunetv2.run.run_training", str(run.dataset_id), run.configuration,
               str(run.fold), "-tr", run.trainer, "-p", run.plans, "-num_gpus", str(num_gpus)]
        cmd += ["--val"] if run.validation_only else ["--c"] if run.resume else []
        subprocess.run(cmd, check=True)
        return
    import torch
    from nnunetv2.run.run_training import run_training
    run_training(str(run.dataset_id), run.configuration, run.fold, run.trainer, run.plans,
                 continue_training=run.resume and not run.validation_only, only_run_validation=run.validation_only,
                 device=torch.device(device))


def fold_task(run: FoldRun, device: str, num_gpus: int, token: str, threads: Optional[int]) -> float:
    """The body of one fold's Ray task: resume where an earlier attempt of this same run left off, train, and
    return the seconds it took; the fold's output goes to its ``ray_train.log``."""
    start = time.time()
    os.makedirs(run.fold_dir, exist_ok=True)
    token_file = os.path.join(run.fold_dir, ATTEMPT_TOKEN)
    retried = os.path.isfile(token_file) and Path(token_file).read_text().strip() == token
    atomic_write_text(token_file, token)
    if retried and not run.validation_only:
        run = replace(run, resume=True)
    if threads:
        import torch
        torch.set_num_threads(threads)
    with open(os.path.join(run.fold_dir, RAY_LOG), "a", buffering=1) as log, \
            contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        what = "validation" if run.validation_only else "retry, resuming" if retried else \
            "resuming" if run.resume else "training"
        print(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} fold {run.fold} on Ray ({what})", flush=True)
        run_fold(run, device, num_gpus)
    os.remove(token_file)
    return time.time() - start


def worker_environment(knobs: dict) -> Dict[str, str]:
    """The variables a fold's worker needs from this process: nnU-Net's folders and settings, our knobs, and the
    backend choice; set when the worker starts (nnU-Net reads its folders once, on import)."""
    env = {k: v for k, v in os.environ.items() if k.startswith("nnUNet") or k == "nnunet_mtl_backend"}
    env[ENV_VAR] = encode_overrides(**knobs)
    return env


def run_folds_on_ray(runs: Sequence[FoldRun], device: str, num_gpus: int = 1, knobs: Optional[dict] = None,
                     address: Optional[str] = None, workers: Optional[int] = None,
                     report: Callable[[str], None] = print) -> None:
    """Every fold of ``runs`` as one Ray task, side by side as far as the cluster's GPUs (CUDA: ``num_gpus``
    each) or CPUs (split evenly between ``workers`` folds at a time, default all) allow; waits for all, then
    raises ``FoldRunError`` naming every failed fold and its log."""
    runs = list(runs)
    if not runs:
        return
    with connected(address) as ray:
        env = worker_environment(knobs or {})
        if device == "cuda":
            resources, threads = {"num_gpus": num_gpus}, None
        else:
            at_once = min(len(runs), workers or len(runs))
            threads = max(1, int(ray.cluster_resources().get("CPU", 1)) // at_once)
            resources = {"num_cpus": threads}
            env["OMP_NUM_THREADS"] = str(threads)
        task = ray.remote(max_retries=RETRIES)(fold_task).options(runtime_env={"env_vars": env}, **resources)
        token = uuid.uuid4().hex
        pending = {task.remote(run, device, num_gpus, token, threads): run for run in runs}
        report(f"{len(runs)} fold(s) submitted to Ray ({', '.join(str(r.fold) for r in runs)}); each fold's output "
               f"goes to fold_X/{RAY_LOG}")
        failed: List[str] = []
        while pending:
            [ref], _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(ref)
            log = os.path.join(run.fold_dir, RAY_LOG)
            try:
                seconds = ray.get(ref)
                report(f"fold {run.fold}: finished on Ray in {seconds / 60:.1f} min ({log})")
            except ray.exceptions.RayError as e:
                line = f"fold {run.fold} failed: {failure_line(e)} (log: {log})"
                report(line)
                failed.append(line)
        if failed:
            raise FoldRunError(f"{len(failed)} of {len(runs)} fold(s) failed on Ray: {'; '.join(failed)}; the other "
                               f"folds are kept, a re-run continues the failed ones from their checkpoints")
