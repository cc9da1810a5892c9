"""Issue 26 item 6: user-facing messages that named the wrong count, line, case or cause.

Each test asserts the one line a user now gets (hostile-user report: NaN count, lateral pairs, labels CSV
spellings, --label_names, pipeline steps run out of order, --test_input, --target_spacing, --folds, and
degenerate bootstrap intervals)."""
import numpy as np
import pytest
from PIL import Image

from nnunet_mtl.conversion.masks import ConversionError


# ------------------------------------------------------------------------------------- 1: NaN count
def test_one_nan_pixel_in_a_2d_image_is_counted_once(tmp_path):
    """Grey 2D images are clipped to percentiles first; one NaN made the percentiles NaN and the whole
    64x64 image NaN, so the check reported 4096 pixels."""
    from nnunet_mtl.conversion.inference_inputs import ModelInputs
    from nnunet_mtl.inference.folders import prepare_folder
    (tmp_path / "in").mkdir()
    arr = np.random.default_rng(0).uniform(0, 100, (64, 64)).astype(np.float32)
    arr[5, 7] = np.nan
    Image.fromarray(arr, mode="F").save(tmp_path / "in" / "bad.tif")
    with pytest.raises(ConversionError, match=r"bad\.tif: image has 1 NaN or infinite pixel value\(s\)"):
        prepare_folder(str(tmp_path / "in"), str(tmp_path / "out"), ModelInputs({"0": "rescale_to_0_1"}, 2))


def test_clipping_leaves_non_finite_pixels_and_clips_the_rest():
    from nnunet_mtl.conversion.image_readers import clip_to_percentiles
    arr = np.arange(100, dtype=np.float32)
    arr[3], arr[4] = np.nan, np.inf
    out = clip_to_percentiles(arr, (1, 99))
    assert np.isnan(out[3]) and np.isinf(out[4]) and np.isfinite(np.delete(out, [3, 4])).all()
    assert out[0] > 0 and out[99] < 99


# ------------------------------------------------------------------------------------- 2: lateral pairs
def test_a_lateral_pair_of_one_label_with_itself_is_refused():
    import argparse
    from nnunet_mtl.conversion.description import add_description_arguments, description_from_args
    from nnunet_mtl.conversion.lateral_pairs import LateralPairError
    parser = argparse.ArgumentParser()
    add_description_arguments(parser)
    args = parser.parse_args(["--label_names", "1=left_x", "--lateral_pairs", "left_x:left_x"])
    with pytest.raises(LateralPairError, match=r"^command line: lateral pair 'left_x:left_x' names 'left_x' on "
                                               r"both sides; a pair is two different labels"):
        description_from_args(args)


# ------------------------------------------------------------------------------------- 3: labels CSV spellings
def test_spelling_clash_names_the_line_of_the_second_spelling(tmp_path):
    """'present' on line 2, 'Present' on line 5 (a blank line 4 counts, as in an editor): sorting the class
    names put 'Present' first and blamed line 2."""
    from nnunet_mtl.targets import TargetSpecError, read_labels_csv
    p = tmp_path / "labels.csv"
    p.write_text("case_id,finding\na,present\nb,absent\n\nc,Present\nd,present\n")
    with pytest.raises(TargetSpecError, match=r"labels\.csv: column 'finding' spells one class two ways, "
                                              r"'present' \(line 2\) and 'Present' \(line 5\)"):
        read_labels_csv(str(p))


def test_duplicate_case_names_its_line_counting_blank_lines(tmp_path):
    from nnunet_mtl.targets import TargetSpecError, read_labels_csv
    p = tmp_path / "labels.csv"
    p.write_text("case_id,finding\na,yes\n\nb,no\na,no\n")
    with pytest.raises(TargetSpecError, match=r"case 'a' appears twice \(line 5\)"):
        read_labels_csv(str(p))


# ------------------------------------------------------------------------------------- 4: --label_names
def _description_args(*argv):
    import argparse
    from nnunet_mtl.conversion.description import add_description_arguments
    parser = argparse.ArgumentParser()
    add_description_arguments(parser)
    return parser.parse_args(list(argv))


def test_label_name_without_a_value_is_refused_up_front():
    """Was read as 1=foo; the error then named a case whose mask holds value 2."""
    from nnunet_mtl.conversion.description import description_from_args
    with pytest.raises(ConversionError, match=r"^--label_names foo: expected VALUE=NAME, e\.g\. 1=liver$"):
        description_from_args(_description_args("--label_names", "foo"))
    with pytest.raises(ConversionError, match=r"^--label_names liver=1: expected VALUE=NAME"):
        description_from_args(_description_args("--label_names", "liver=1"))
    assert description_from_args(_description_args("--label_names", "1=a", "2=b")).labels == \
        {"background": 0, "a": 1, "b": 2}


def test_naming_mask_value_0_says_it_is_the_background():
    from nnunet_mtl.conversion.description import description_from_args
    with pytest.raises(ConversionError, match=r"^command line: label foo=0: mask value 0 is the background and "
                                              r"cannot be named; the structures are numbered from 1$"):
        description_from_args(_description_args("--label_names", "0=foo", "1=a", "2=b"))


# ------------------------------------------------------------------------------------- 8: --target_spacing
def test_zero_target_spacing_is_refused_as_not_positive():
    from nnunet_mtl.conversion.masks import Geometry, target_grid
    from nnunet_mtl.conversion.options import ConversionOptions
    with pytest.raises(ConversionError, match=r"^target spacing \[0\.0, 1\.0\]: spacing values must be positive, "
                                              r"got 0\.0$"):
        ConversionOptions.from_keywords(target_spacing=[0, 1])
    grid = Geometry((8, 8), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    with pytest.raises(ConversionError, match=r"spacing values must be positive, got -2\.0"):
        target_grid(grid, (1, -2))
    with pytest.raises(ConversionError, match=r"does not fit 2D images"):  # the dimension check stays
        target_grid(grid, (1, 1, 1))


# ------------------------------------------------------------------------------------- 5-7: pipeline steps
@pytest.fixture
def nnunet_env(monkeypatch):
    """The nnU-Net folder variables the workflow points at its base dir, put back after the test."""
    import os
    for k in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "nnUNet_extTrainer"):
        if k in os.environ:
            monkeypatch.setenv(k, os.environ[k])
        else:
            monkeypatch.delenv(k, raising=False)


def _prepared_state(tmp_path):
    """A base dir whose preparation finished (state file, raw dataset with imagesTs) but nothing trained."""
    from nnunet_mtl.workflow import PipelineState, save_state
    raw = tmp_path / "base" / "nnUNet_raw" / "Dataset990_X"
    (raw / "imagesTs").mkdir(parents=True)
    save_state(str(tmp_path / "base"), PipelineState(990, "X", str(raw), "2d", "nnUNetPlans", "nnUNetTrainerMTL",
                                                     [0, 1]))
    return str(tmp_path / "base")


def test_inference_in_an_unprepared_base_dir_says_what_to_run(tmp_path, nnunet_env):
    from nnunet_mtl.workflow import PipelineError, infer
    with pytest.raises(PipelineError, match=r"base: holds no prepared dataset or trained model "
                                            r"\(nnunet_mtl_pipeline\.json not found\); run --prepare_only and "
                                            r"--train_only first, or give --model_dir$"):
        infer(str(tmp_path / "base"), device="cpu")


def test_untrained_base_dir_says_no_fold_has_a_checkpoint(tmp_path, nnunet_env):
    """Was 'no fold has no checkpoint_final.pth' (fitting heads) and 'no trained fold with ...' (inference)."""
    from nnunet_mtl.workflow import PipelineError, fit_heads, infer
    base = _prepared_state(tmp_path)
    line = r"nnUNetTrainerMTL__nnUNetPlans__2d: no fold has a checkpoint_final\.pth; run --train_only first$"
    with pytest.raises(PipelineError, match=line):
        fit_heads(base, device="cpu")
    with pytest.raises(PipelineError, match=line):
        infer(base, device="cpu")
    with pytest.raises(PipelineError, match=r"fold 1 has no checkpoint_final\.pth; run --train_only --fold 1 first$"):
        infer(base, folds=[1], device="cpu")


def test_test_input_that_is_a_file_is_named_as_a_file(tmp_path, nnunet_env):
    from nnunet_mtl.workflow import PipelineError, infer
    base = _prepared_state(tmp_path)
    image = tmp_path / "case.png"
    image.write_bytes(b"")
    with pytest.raises(PipelineError, match=r"case\.png: is a file, not a folder; --test_input takes a folder of "
                                            r"test images$"):
        infer(base, test_input=str(image), device="cpu")


# ------------------------------------------------------------------------------------- 9: --folds
@pytest.mark.parametrize("n_folds", [20, 1])
def test_fold_count_is_checked_before_planning(tmp_path, nnunet_env, monkeypatch, n_folds):
    """--folds 20 with 4 cases was refused only after nnU-Net had planned and preprocessed (minutes)."""
    from nnunet_mtl import workflow
    from nnunet_mtl.synthetic import write_radiograph_layout
    from split_tools.splits import SplitError

    def planning(*args, **kwargs):
        raise AssertionError("planning started before the fold count was checked")
    monkeypatch.setattr(workflow, "plan_and_preprocess", planning)
    data = write_radiograph_layout(str(tmp_path / "data"), n=4, n_test=0, size=(16, 16))
    with pytest.raises(SplitError, match=rf"Dataset952_data.dataset\.json: cannot make {n_folds} folds from 4 cases "
                                         rf"\(folds must be at least 2 and at most the number of cases\)$"):
        workflow.prepare(str(tmp_path / "base"), data, 952, n_folds=n_folds)
