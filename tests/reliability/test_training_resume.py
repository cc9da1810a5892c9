"""A training killed at any epoch resumes losing at most one epoch; checkpoints are written atomically."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import torch

from nnunet_mtl.training.knobs import encode_overrides
from nnunet_mtl.planning import trainer_dir
from nnunet_mtl.training.checkpointing import save_atomically
from tests.helpers import SHORT

EPOCHS = 6


def _train_command(ds, resume: bool):
    cmd = [sys.executable, "-c", "from nnunetv2.run.run_training import run_training_entry as m; m()",
           str(ds.id), "2d", "3", "-tr", "nnUNetTrainerMTL", "-p", ds.plans, "-device", "cpu"]
    return cmd + (["--c"] if resume else [])


def _env():
    return {**os.environ, "nnUNet_extTrainer": trainer_dir(),
            "NNUNET_MTL_OVERRIDES": encode_overrides(**{**SHORT, "num_iterations_per_epoch": 2},
                                                     num_epochs=EPOCHS, checkpoint_minutes=0)}


def _epochs_logged(fold_dir: str) -> int:
    logs = glob.glob(os.path.join(fold_dir, "training_log_*.txt"))
    return sum(open(p).read().count("Epoch time") for p in logs)


def test_killed_training_resumes_losing_at_most_one_epoch(dataset_2d):
    fold_dir = os.path.join(dataset_2d.model_folder("nnUNetTrainerMTL"), "fold_3")
    proc = subprocess.Popen(_train_command(dataset_2d, resume=False), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _epochs_logged(fold_dir) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert proc.poll() is None, "training ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before_kill = _epochs_logged(fold_dir)
    latest = torch.load(os.path.join(fold_dir, "checkpoint_latest.pth"), map_location="cpu", weights_only=False)
    assert latest["current_epoch"] >= done_before_kill - 1  # at most the epoch in flight is lost
    assert not os.path.exists(os.path.join(fold_dir, "checkpoint_final.pth"))

    logs_before = set(glob.glob(os.path.join(fold_dir, "training_log_*.txt")))
    resumed = subprocess.run(_train_command(dataset_2d, resume=True), env=_env(), capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (new_log,) = set(glob.glob(os.path.join(fold_dir, "training_log_*.txt"))) - logs_before
    text = open(new_log).read()
    started = [int(n) for n in re.findall(r": Epoch (\d+)\s*$", text, re.MULTILINE)]
    assert started and started[0] == latest["current_epoch"]  # continued where the checkpoint left off
    history = json.load(open(os.path.join(fold_dir, "mtl_progress.json")))
    assert [r["epoch"] for r in history] == list(range(EPOCHS))  # every epoch once, in order
    assert os.path.isfile(os.path.join(fold_dir, "checkpoint_final.pth"))


def test_a_failed_write_leaves_the_previous_checkpoint_intact(tmp_path):
    target = tmp_path / "checkpoint_latest.pth"
    target.write_bytes(b"previous")

    def crash(path):
        with open(path, "wb") as f:
            f.write(b"half a checkpo")
        raise KeyboardInterrupt  # killed mid-write

    try:
        save_atomically(crash, str(target))
    except KeyboardInterrupt:
        pass
    assert target.read_bytes() == b"previous"
    save_atomically(lambda p: open(p, "wb").write(b"new"), str(target))
    assert target.read_bytes() == b"new" and not os.path.exists(str(target) + ".part")
