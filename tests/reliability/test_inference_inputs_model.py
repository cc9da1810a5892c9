"""Issue 13, test inputs against a real trained model: its channels and dimensionality come from its
dataset.json and plans, and a mismatching input is refused before anything is predicted."""
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mtl.conversion.masks import ConversionError
from nnunet_mtl.inference.folders import predict_folder
from nnunet_mtl.inference.loader import load_predictor, model_inputs
from tests.reliability.helpers import snapshot


def test_trained_2d_model_takes_one_channel_2d_images_and_refuses_a_volume(trained_2d, tmp_path):
    predictor = load_predictor(trained_2d, folds=[0], backend="torch")
    model = model_inputs(predictor)
    assert model.image_dims == 2 and model.n_channels == 1
    (tmp_path / "in").mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((5, 64, 64), np.float32)), str(tmp_path / "in" / "vol.nii.gz"))
    (tmp_path / "out").mkdir()
    before = snapshot(str(tmp_path / "out"))
    with pytest.raises(ConversionError, match=r"vol\.nii\.gz: a 3D volume \(size \[64, 64, 5\]\) but the model was "
                                              r"trained on 2D images"):
        predict_folder(predictor, str(tmp_path / "in"), str(tmp_path / "out"))
    assert snapshot(str(tmp_path / "out")) == before and not os.listdir(tmp_path / "out")
