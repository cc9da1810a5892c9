"""The fingerprint parts of ood_score on arrays: an inverted, rescaled or noise image is flagged, a training-like
one is not; the check columns and the warning line."""
import numpy as np

from nnunet_mtl import case_checks
from nnunet_mtl.inference.input_check import check_image

FINGERPRINT = {"foreground_intensity_properties_per_channel": {
    "0": {"percentile_00_5": 80.0, "percentile_99_5": 400.0, "mean": 250.0, "std": 60.0}},
    "spacings": [[3.0, 0.8, 0.8], [2.5, 0.7, 0.7], [3.0, 0.9, 0.9]]}


def _image(rng):
    """A dark background (0-40) with a bright structure (100-380) filling a fifth of the volume."""
    img = rng.uniform(0, 40, size=(1, 20, 40, 40))
    img[:, 4:16, 10:30, 10:30] = rng.uniform(100, 380, size=(1, 12, 20, 20))
    return img


def _ood(image, spacing=(3.0, 0.8, 0.8)):
    return case_checks.ood_score(check_image(image, spacing, FINGERPRINT))


def test_training_like_image_is_not_flagged_and_altered_ones_are():
    rng = np.random.default_rng(0)
    img = _image(rng)
    assert _ood(img) < 1.0
    assert _ood(-img) > 1.0                       # inverted
    assert _ood(img * 1000) > 1.0                 # rescaled
    assert _ood(rng.normal(size=img.shape)) > 1.0  # noise
    assert _ood(img, spacing=(3.0, 0.1, 0.1)) > 1.0  # spacing far below the training range


def test_without_a_fingerprint_there_is_no_check():
    assert check_image(np.zeros((1, 4, 4)), (1.0, 1.0), None) == {}


def test_columns_and_warning_name_the_case_and_the_value():
    rng = np.random.default_rng(1)
    outputs = {**check_image(-_image(rng), (3.0, 0.8, 0.8), FINGERPRINT),
               case_checks.RAW_SEG_QUALITY: np.array([0.3]), case_checks.RAW_SEG_THRESHOLD: np.array([0.6])}
    cols = case_checks.columns_of(outputs)
    assert cols[case_checks.OOD_FLAG] == "yes" and cols[case_checks.SEG_QUALITY_FLAG] == "yes"
    line = case_checks.warning("case_7", outputs)
    assert line.startswith("case case_7: unlike the training data (only 0.0 % of the image") and "\n" not in line
    assert case_checks.warning("ok", {case_checks.RAW_SEG_QUALITY: np.array([0.9])}) is None
    assert case_checks.columns_of({}) == {}
