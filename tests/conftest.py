"""Shared fixtures: tiny synthetic datasets planned and preprocessed by real nnU-Net, once per session."""
import os

os.environ.setdefault("nnUNet_n_proc_DA", "0")
os.environ.setdefault("nnUNet_def_n_proc", "2")
os.environ["nnUNet_compile"] = "f"
os.environ.setdefault("MPLBACKEND", "Agg")
# nnU-Net's own network execution everywhere but in the OpenVINO tests (tests/test_openvino_backend.py and the
# ones that ask for it): converting every short-trained model would add minutes to the suite
os.environ["nnunet_mtl_backend"] = "torch"

import pytest  # noqa: E402

from tests.helpers import TinyDataset, prepare_dataset, train  # noqa: E402


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
