"""pipeline.py --train_only --engine ray: each fold a Ray task on a local cluster; a fold whose worker dies is run
again by Ray and continues from its checkpoint; a fold that fails is named with its log, the others kept."""
import glob
import os

import pytest
import torch

from tests.test_pipeline import pipeline, prepare_radiographs  # noqa: F401 (the fixture)

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(600)

TINY = ["--planner", "plain", "--max_features", "16", "--batch_size", "2", "--n_stages", "3", "--folds", "2"]
BUDGET = ["--device", "cpu", "--epochs", "2", "--iterations_per_epoch", "2", "--val_iterations_per_epoch", "1",
          "--checkpoint_minutes", "0", "--heads", "trained"]


@pytest.fixture(scope="module")
def cluster(work, tmp_path_factory):
    """A local two-CPU cluster whose workers die once when the second epoch of the fold named in the file this
    returns starts (tests/ray_hooks.py); started after the dataset is planned (nnU-Net's planning forks worker
    processes, which can hang in the threads of a running Ray driver)."""
    marker = tmp_path_factory.mktemp("ray_train") / "kill_fold"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"NNUNET_MTL_TEST_KILL_FOLD": str(marker), "PYTHONPATH": path},
                          "worker_process_setup_hook": "tests.ray_hooks.kill_named_fold_once"})
    yield marker
    ray.shutdown()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    return prepare_radiographs(tmp_path_factory.mktemp("ray_pipe"), 941, TINY, n=8, n_test=0, size=(32, 32))


def fold_dir(work, k):
    (model,) = glob.glob(os.path.join(work, "nnUNet_results", "Dataset941_*", "*__2d"))
    return os.path.join(model, f"fold_{k}")


def test_two_folds_train_as_ray_tasks_and_a_killed_one_resumes(cluster, work, pipeline):  # noqa: F811
    cluster.write_text("1")
    code, out, err = pipeline("--base_dir", work, "--train_only", "--engine", "ray", *BUDGET)
    assert code == 0, err
    assert not cluster.exists(), "fold 1's worker was killed once"
    assert "2 fold(s) submitted to Ray (0, 1)" in out
    shapes = []
    for k in (0, 1):
        folder = fold_dir(work, k)
        assert f"fold {k}: finished on Ray" in out
        ckpt = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu", weights_only=False)
        assert ckpt["current_epoch"] == 2
        shapes.append({n: tuple(t.shape) for n, t in ckpt["network_weights"].items()})
        logs = "".join(open(p).read() for p in glob.glob(os.path.join(folder, "training_log_*.txt")))
        assert "Training done." in logs
        assert os.path.isfile(os.path.join(folder, "validation", "mtl_summary.json"))
        assert not os.path.exists(os.path.join(folder, ".ray_fold_attempt"))
    assert shapes[0] == shapes[1]
    log1 = open(os.path.join(fold_dir(work, 1), "ray_train.log")).read()
    assert "(training)" in log1 and "(retry, resuming)" in log1  # Ray ran it again, from its checkpoint
    assert "(retry" not in open(os.path.join(fold_dir(work, 0), "ray_train.log")).read()

    code, out, _ = pipeline("--base_dir", work, "--train_only", "--engine", "ray", *BUDGET)
    assert code == 0 and out.count("already trained and validated; skipping") == 2 and "submitted" not in out


def test_a_failing_fold_is_named_with_its_log(cluster, work, pipeline):  # noqa: F811
    code, _, err = pipeline("--base_dir", work, "--train_only", "--engine", "ray", "--fold", "0", "--overwrite",
                            *BUDGET, "--init_from", os.path.join(work, "no_such_model"))
    assert code == 2 and err.count("\n") == 1
    assert "1 of 1 fold(s) failed on Ray: fold 0 failed:" in err and "no_such_model" in err
    assert os.path.join(fold_dir(work, 0), "ray_train.log") in err
