"""Shared fixtures: tiny synthetic datasets planned and preprocessed by real nnU-Net, and models trained on them,
built once per test run.

The suite runs in two pytest-xdist workers (README: ``-n 2``), one torch thread each (two trainings side by side
with torch's default threads spin on a 2-core machine). A session fixture is built by whichever worker asks
first, under a file lock, and read by the other (``shared``), so nothing is trained twice.
"""
import json
import os

os.environ.setdefault("nnUNet_n_proc_DA", "0")
os.environ.setdefault("nnUNet_def_n_proc", "2")
os.environ["nnUNet_compile"] = "f"
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):  # before torch is imported: its thread pools read it once
    os.environ["OMP_NUM_THREADS"] = "1"
# nnU-Net's own network execution where the command line chooses (its default comes from this variable) and in
# the library calls of the tests (``backend="torch"``), OpenVINO in tests/test_openvino_backend.py and where a
# test asks for it: converting every short-trained model would add minutes to the suite
os.environ["nnunet_mtl_backend"] = "torch"

import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402

from tests.helpers import TinyDataset, prepare_dataset, train, train_stock, write_labels_csv  # noqa: E402


def shared(tmp_path_factory, name: str, make):
    """``make()`` once per test run (its result JSON-able), whichever worker asks first; the others wait and
    read it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # the run's folder, above each worker's own
    marker = root / f"shared_{name}.json"
    with FileLock(str(root / f"shared_{name}.lock")):
        if marker.is_file():
            return json.loads(marker.read_text())
        value = make()
        marker.write_text(json.dumps(value))
        return value


def _dataset(tmp_path_factory, name: str, make) -> TinyDataset:
    return TinyDataset(**shared(tmp_path_factory, name, lambda: make().__dict__))


@pytest.fixture(scope="session")
def nnunet_paths(tmp_path_factory):
    from nnunet_mtl.planning import use_base_dir

    def make():
        folder = tmp_path_factory.getbasetemp()
        if os.environ.get("PYTEST_XDIST_WORKER"):
            folder = folder.parent
        return str(folder / "nnunet")
    return use_base_dir(shared(tmp_path_factory, "nnunet_base", make))


@pytest.fixture(scope="session")
def dataset_2d(nnunet_paths, tmp_path_factory) -> TinyDataset:
    return _dataset(tmp_path_factory, "dataset_2d",
                    lambda: prepare_dataset(nnunet_paths, 901, "2d", planner="plain", n=10, n_test=3))


@pytest.fixture(scope="session")
def dataset_3d_resenc(nnunet_paths, tmp_path_factory) -> TinyDataset:
    return _dataset(tmp_path_factory, "dataset_3d_resenc",
                    lambda: prepare_dataset(nnunet_paths, 902, "3d", planner="resenc_m", n=9, n_test=2))


@pytest.fixture(scope="session")
def trained_2d(dataset_2d, tmp_path_factory):
    """fold 0 of the 2D dataset, 2 short epochs; returns the model folder."""
    return shared(tmp_path_factory, "trained_2d", lambda: train(dataset_2d, "nnUNetTrainerMTL", 0, num_epochs=2))


@pytest.fixture(scope="session")
def stock_2d(dataset_2d, tmp_path_factory):
    """Stock nnUNetTrainer, fold 0, one epoch of 3 iterations (attributes set like nnUNetTrainer_Xepochs)."""
    return shared(tmp_path_factory, "stock_2d", lambda: train_stock(dataset_2d))


@pytest.fixture(scope="session")
def labels_csv(dataset_2d, tmp_path_factory):
    """The 2D dataset's image-level labels as a user's CSV (case_id, finding)."""
    return shared(tmp_path_factory, "labels_csv", lambda: write_labels_csv(
        dataset_2d, str(tmp_path_factory.mktemp("labels") / "labels.csv")))


@pytest.fixture(scope="session")
def fitted_2d(stock_2d, labels_csv, tmp_path_factory):
    """nnunet_mtl_add_heads on the stock model: a model folder of ours with heads fitted on fold 0."""
    from nnunet_mtl.cli import add_heads

    def make():
        out = str(tmp_path_factory.mktemp("fitted") / "finding_model")
        assert add_heads.main(["-m", stock_2d, "--labels_csv", labels_csv, "-o", out, "-device", "cpu"]) == 0
        return out
    return shared(tmp_path_factory, "fitted_2d", make)


@pytest.fixture(scope="session")
def trained_3d(dataset_3d_resenc, tmp_path_factory):
    """fold 0 of the 3D ResEnc dataset, 1 short epoch, validated; returns the model folder."""
    return shared(tmp_path_factory, "trained_3d",
                  lambda: train(dataset_3d_resenc, "nnUNetTrainerMTL", 0, num_epochs=1))


# the fixtures whose model folders tests write into (trainings of other folds, trainer variants): every module
# that uses one runs in one pytest-xdist worker, so no two processes write a model folder another one reads
DATASET_2D_FIXTURES = {"dataset_2d", "trained_2d", "stock_2d", "labels_csv", "fitted_2d"}


# the longest groups start first (longest job first), so neither worker is left with a long one at the end
LONG_GROUPS = ("tests.test_ray_engine", "dataset_2d", "tests.test_ray_training")


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the groups
def pytest_collection_modifyitems(config, items):
    """Whole modules per worker (their module fixtures are built once); the 2D dataset's modules in one group;
    the long groups first."""
    uses_2d = {item.module.__name__ for item in items if DATASET_2D_FIXTURES & set(item.fixturenames)}
    groups = {}
    for item in items:
        groups[item.nodeid] = "dataset_2d" if item.module.__name__ in uses_2d else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))
    rank = {g: i for i, g in enumerate(LONG_GROUPS)}
    items.sort(key=lambda item: rank.get(groups[item.nodeid], len(rank)))  # stable: the rest keep their order
