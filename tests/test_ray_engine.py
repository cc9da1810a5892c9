"""engine='ray': the folder's cases on Ray Data actors give the threads engine's masks and rows, and resume."""
import csv
import os
import shutil
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mtl.inference.folders import predict_folder
from nnunet_mtl.inference.loader import load_predictor

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def local_ray(request, tmp_path_factory):
    """One small local cluster for this module (two CPUs), stopped at its end; its workers fail the case named in
    the file this returns (tests/ray_hooks.py). The models are made first: a process forked while Ray runs here
    (nnU-Net's multiprocessing pools in training and planning) can hang in Ray's threads."""
    request.getfixturevalue("trained_3d")  # first: the other worker is meanwhile making the 2D model (it starts
    request.getfixturevalue("model")       # with the 2D group), which this one would otherwise wait for
    marker = tmp_path_factory.mktemp("ray") / "fail_case"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # workers import tests.ray_hooks from here
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "NNUNET_MTL_TEST_FAIL_CASE": str(marker),
                                       "PYTHONPATH": path},
                          "worker_process_setup_hook": "tests.ray_hooks.fail_named_case"})
    yield marker
    ray.shutdown()


@pytest.fixture(scope="module")
def model(request, tmp_path_factory):
    """A copy of the shared 2D model's fold 0, asked for at run time, not in the signature, so this module is not
    put in the 2D dataset's xdist group (it only reads the model; conftest's grouping): it runs on the other
    worker, beside that long group."""
    src = request.getfixturevalue("trained_2d")
    dst = tmp_path_factory.mktemp("ray_model") / "model"
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if n.startswith("fold_") and n != "fold_0"])
    return str(dst)


@pytest.fixture(scope="module")
def images(request, tmp_path_factory):
    src = os.path.join(request.getfixturevalue("dataset_2d").raw_folder, "imagesTs")
    dst = tmp_path_factory.mktemp("ray_images") / "imagesTs"
    shutil.copytree(src, dst)
    return str(dst)


def rows(csv_path):
    with open(csv_path) as f:
        return {r["case_id"]: r for r in csv.DictReader(f)}


def masks(folder):
    return {f: sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(folder, f)))
            for f in sorted(os.listdir(folder)) if f.endswith(".nii.gz")}


def test_ray_engine_matches_threads_and_resumes_even_when_a_worker_dies(local_ray, model, images, tmp_path, capsys):
    """nnunet_mtl_predict --engine ray, its worker process killed during the second case: Ray starts another actor
    and runs the case again; masks and rows equal the threads engine's (same settings), one row per case; a re-run
    keeps them."""
    from nnunet_mtl.cli import predict
    cases = sorted(f[:-len("_0000.nii.gz")] for f in os.listdir(images) if f.endswith("_0000.nii.gz"))
    predictor = load_predictor(model, folds=[0], use_mirroring=False, backend="torch")
    out = {"threads": str(tmp_path / "threads"), "ray": str(tmp_path / "ray")}
    predict_folder(predictor, images, out["threads"], num_processes_preprocessing=1, num_processes_export=1)
    local_ray.write_text(f"kill {cases[1]}")
    assert predict.main(["-i", images, "-o", out["ray"], "-m", model, "-f", "0", "-device", "cpu", "--disable_tta",
                         "--engine", "ray"]) == 0
    assert not local_ray.exists(), "the worker was killed"
    assert "3 predicted, 0 kept, 0 removed" in capsys.readouterr().out
    threads, on_ray = masks(out["threads"]), masks(out["ray"])
    assert len(threads) == 3 and threads.keys() == on_ray.keys()
    for name in threads:
        np.testing.assert_array_equal(threads[name], on_ray[name])
    a, b = rows(os.path.join(out["threads"], "predictions.csv")), rows(os.path.join(out["ray"], "predictions.csv"))
    assert a == b and sorted(b) == cases
    with open(os.path.join(out["ray"], "predictions.csv")) as f:
        assert len(f.read().strip().splitlines()) == 1 + len(cases)  # no case twice

    lines = []
    predict_folder(predictor, images, out["ray"], engine="ray", report=lines.append)
    assert lines == [f"{out['ray']}: 0 predicted, 3 kept, 0 removed"]
    assert rows(os.path.join(out["ray"], "predictions.csv")) == b
    assert not [f for f in os.listdir(out["ray"]) if f.startswith(".incoming")]


def test_ray_options_belong_to_the_ray_engine(model, images, tmp_path):
    predictor = load_predictor(model, folds=[0], use_mirroring=False, backend="torch")
    with pytest.raises(ValueError, match="engine 'ray'"):
        predict_folder(predictor, images, str(tmp_path), ray_workers=2)


def test_classify_cli_runs_on_ray(local_ray, model, images, capsys):
    from nnunet_mtl.cli import classify
    files = sorted(os.path.join(images, f) for f in os.listdir(images))
    answers = {}
    for engine in ("threads", "ray"):
        assert classify.main(["-m", model, "-f", "0", "--backend", "torch", *files, "--engine", engine]) == 0
        lines = capsys.readouterr().out.strip().splitlines()
        answers[engine] = {line.split("\t")[0]: line.split("\t")[1:3] for line in lines}
    assert sorted(answers["ray"]) == files and answers["ray"] == answers["threads"]  # class and probability


@pytest.mark.parametrize("argv, ray_missing, line", [
    (["--ray_workers", "2"], False, "--address and --ray_workers are for --engine ray, not --engine threads"),
    (["--engine", "ray", "--ray_workers", "0"], False, "--ray_workers must be >= 1, got 0"),
    (["--engine", "ray"], True, "pip install nnunet_mtl[cluster]"),
])
def test_ray_options_fail_in_one_line_before_loading(argv, ray_missing, line, tmp_path, capsys, monkeypatch):
    """Checked before the model folder is read (this one does not exist)."""
    from nnunet_mtl.cli import predict
    if ray_missing:
        monkeypatch.setitem(sys.modules, "ray.data", None)  # import ray.data raises ImportError
    assert predict.main(["-i", str(tmp_path), "-o", str(tmp_path / "o"), "-m", str(tmp_path / "no_model"),
                         *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and line in err[0]


def test_a_case_failing_on_a_worker_leaves_one_row_per_case_after_a_rerun(local_ray, model, images,
                                                                          tmp_path):
    """The run stops with a consistent table; the next run, whatever its engine (here the threads engine, to keep
    the suite short), keeps the finished cases and predicts the rest."""
    cases = sorted(f[:-len("_0000.nii.gz")] for f in os.listdir(images) if f.endswith("_0000.nii.gz"))
    predictor = load_predictor(model, folds=[0], use_mirroring=False, backend="torch")
    out, lines = str(tmp_path / "out"), []
    local_ray.write_text(cases[1])
    try:
        with pytest.raises(Exception, match="failed in the Ray worker"):
            predict_folder(predictor, images, out, engine="ray", report=lines.append)
    finally:
        local_ray.unlink()
    assert "run again to finish" in lines[-1]
    done = rows(os.path.join(out, "predictions.csv"))
    assert cases[1] not in done and set(done) < set(cases)
    predict_folder(predictor, images, out, report=lines.append)
    assert lines[-1] == f"{out}: {3 - len(done)} predicted, {len(done)} kept, 0 removed"
    assert sorted(rows(os.path.join(out, "predictions.csv"))) == cases
    assert sorted(masks(out)) == [c + ".nii.gz" for c in cases]


def test_a_worker_without_the_model_files_says_which_file(local_ray, model, tmp_path):
    """The model folder must be on storage every node sees: a worker that cannot read it names the file, and the
    driver reports the worker's own line, not Ray's traceback."""
    from nnunet_mtl.cluster.session import failure_line
    from nnunet_mtl.inference.ray_engine import load_on_worker, worker_settings
    from tests.ray_hooks import ActorWithoutTheModel
    copy = tmp_path / "model_copy"
    shutil.copytree(model, copy)
    settings = worker_settings(load_predictor(str(copy), folds=[0], use_mirroring=False, backend="torch"))
    missing = copy / "fold_0" / "checkpoint_final.pth"
    os.remove(missing)  # loaded here, gone for a worker
    with pytest.raises(FileNotFoundError, match=f"^{missing}: checkpoint not found on Ray worker node "):
        load_on_worker(settings)
    dataset = ray.data.from_items([{"x": 1}]).map_batches(ActorWithoutTheModel, fn_constructor_args=(str(missing),),
                                                          compute=ray.data.ActorPoolStrategy(size=1), num_cpus=1)
    with pytest.raises(ray.exceptions.RayError) as raised:
        dataset.take_all()
    assert failure_line(raised.value) == (f"FileNotFoundError: {missing}: checkpoint not found on Ray worker node "
                                          f"test; the model folder must be on storage every node sees at the same "
                                          f"path")


def test_ray_engine_matches_threads_on_the_3d_model(local_ray, trained_3d, dataset_3d_resenc, tmp_path):
    images = os.path.join(dataset_3d_resenc.raw_folder, "imagesTs")
    predictor = load_predictor(trained_3d, folds=[0], use_mirroring=False, backend="torch")
    out = {}
    for engine in ("threads", "ray"):
        out[engine] = str(tmp_path / engine)
        predict_folder(predictor, images, out[engine], engine=engine, num_processes_preprocessing=1,
                       num_processes_export=1)
    threads, on_ray = masks(out["threads"]), masks(out["ray"])
    assert len(threads) == 2 and threads.keys() == on_ray.keys()
    for name in threads:
        np.testing.assert_array_equal(threads[name], on_ray[name])
    assert rows(os.path.join(out["threads"], "predictions.csv")) == rows(os.path.join(out["ray"], "predictions.csv"))
