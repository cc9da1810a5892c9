"""Shared fixtures: tiny synthetic datasets planned and preprocessed by real nnU-Net, once per session."""
import os

os.environ.setdefault("nnUNet_n_proc_DA", "0")
os.environ.setdefault("nnUNet_def_n_proc", "2")
os.environ["nnUNet_compile"] = "f"
os.environ.setdefault("MPLBACKEND", "Agg")
# nnU-Net's own network execution where the command line chooses (its default comes from this variable) and in
# the library calls of the tests (``backend="torch"``), OpenVINO in tests/test_openvino_backend.py and where a
# test asks for it: converting every short-trained model would add minutes to the suite
os.environ["nnunet_mtl_backend"] = "torch"

import pytest  # noqa: E402

from tests.helpers import TinyDataset, prepare_dataset, train, train_stock, write_labels_csv  # noqa: E402


@pytest.fixture(scope="session")
def nnunet_paths(tmp_path_factory):
    from nnunet_mtl.planning import use_base_dir
    return use_base_dir(str(tmp_path_factory.mktemp("nnunet")))


@pytest.fixture(scope="session")
def dataset_2d(nnunet_paths) -> TinyDataset:
    return prepare_dataset(nnunet_paths, 901, "2d", planner="plain", n=10, n_test=3)


@pytest.fixture(scope="session")
def dataset_3d_resenc(nnunet_paths) -> TinyDataset:
    return prepare_dataset(nnunet_paths, 902, "3d", planner="resenc_m", n=9, n_test=2)


@pytest.fixture(scope="session")
def trained_2d(dataset_2d):
    """fold 0 of the 2D dataset, 2 short epochs; returns the model folder."""
    return train(dataset_2d, "nnUNetTrainerMTL", 0, num_epochs=2)


@pytest.fixture(scope="session")
def stock_2d(dataset_2d):
    """Stock nnUNetTrainer, fold 0, one epoch of 3 iterations (attributes set like nnUNetTrainer_Xepochs)."""
    return train_stock(dataset_2d)


@pytest.fixture(scope="session")
def labels_csv(dataset_2d, tmp_path_factory):
    """The 2D dataset's image-level labels as a user's CSV (case_id, finding)."""
    return write_labels_csv(dataset_2d, str(tmp_path_factory.mktemp("labels") / "labels.csv"))


@pytest.fixture(scope="session")
def fitted_2d(stock_2d, labels_csv, tmp_path_factory):
    """nnunet_mtl_add_heads on the stock model: a model folder of ours with heads fitted on fold 0."""
    from nnunet_mtl.cli import add_heads
    out = str(tmp_path_factory.mktemp("fitted") / "finding_model")
    assert add_heads.main(["-m", stock_2d, "--labels_csv", labels_csv, "-o", out, "-device", "cpu"]) == 0
    return out


@pytest.fixture(scope="session")
def trained_3d(dataset_3d_resenc):
    """fold 0 of the 3D ResEnc dataset, 1 short epoch, validated; returns the model folder."""
    return train(dataset_3d_resenc, "nnUNetTrainerMTL", 0, num_epochs=1)
