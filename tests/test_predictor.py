"""Whole-case multi-task inference: stock nnU-Net entry points, our predictor, CSV, folds, parts."""
import csv
import glob
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from nnunet_mtl import trainer_dir
from nnunet_mtl.inference import openvino_backend
from nnunet_mtl.inference.folders import predict_folder
from nnunet_mtl.inference.loader import load_predictor
from nnunet_mtl.inference.tiling import tile_weights
from tests.helpers import SHORT

pytestmark = pytest.mark.timeout(600)


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def masks(folder):
    return {os.path.basename(p): sitk.GetArrayFromImage(sitk.ReadImage(p))
            for p in sorted(glob.glob(os.path.join(folder, "*.nii.gz")))}


def run(cmd, **env):
    full_env = {**os.environ, "nnUNet_extTrainer": trainer_dir(), **env}
    proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=500)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def stock_trained(dataset_2d):
    """Fold 4 trained by the real `nnUNetv2_train` console script with our trainer."""
    from nnunet_mtl.training.knobs import encode_overrides
    run(["nnUNetv2_train", str(dataset_2d.id), "2d", "4", "-tr", "nnUNetTrainerMTL", "-p", dataset_2d.plans,
         "-device", "cpu"], NNUNET_MTL_OVERRIDES=encode_overrides(**SHORT, num_epochs=1))
    folder = dataset_2d.model_folder("nnUNetTrainerMTL")
    assert os.path.isfile(os.path.join(folder, "fold_4", "checkpoint_final.pth"))
    assert os.path.isfile(os.path.join(folder, "fold_4", "validation", "predictions.csv"))
    return folder


def test_stock_predict_and_ours_give_identical_masks(stock_trained, dataset_2d, tmp_path):
    images = os.path.join(dataset_2d.raw_folder, "imagesTs")
    run(["nnUNetv2_predict", "-i", images, "-o", str(tmp_path / "stock"), "-d", str(dataset_2d.id), "-c", "2d",
         "-f", "4", "-tr", "nnUNetTrainerMTL", "-p", dataset_2d.plans, "-device", "cpu", "-npp", "1", "-nps", "1"])
    predictor = load_predictor(stock_trained, folds=[4], backend="torch")  # nnU-Net's own network execution
    csv_path = predict_folder(predictor, images, str(tmp_path / "ours"))
    stock, ours = masks(tmp_path / "stock"), masks(tmp_path / "ours")
    assert stock.keys() == ours.keys() and len(stock) == 3
    for name in stock:
        assert np.array_equal(stock[name], ours[name]), name
    if openvino_backend.available():  # the CPU default: the same masks within the rule (Dice >= 0.999 per label)
        predict_folder(load_predictor(stock_trained, folds=[4], backend="openvino"), images,
                       str(tmp_path / "ours_openvino"))
        fast = masks(tmp_path / "ours_openvino")
        for name in stock:
            for label in np.unique(stock[name])[1:]:
                a, b = stock[name] == label, fast[name] == label
                assert 2 * (a & b).sum() / (a.sum() + b.sum()) >= 0.999, (name, label)
    rows = read_csv(csv_path)
    assert sorted(r["case_id"] for r in rows) == sorted(n[:-len(".nii.gz")] for n in stock)
    for r in rows:
        p = [float(r["finding_prob_absent"]), float(r["finding_prob_present"])]
        assert abs(sum(p) - 1) < 1e-6 and r["finding"] == ("absent", "present")[int(np.argmax(p))]


def test_folds_ensemble_averages_case_probabilities(stock_trained, trained_2d, dataset_2d, tmp_path):
    images = os.path.join(dataset_2d.raw_folder, "imagesTs")
    probs = {}
    for folds in ([0], [4], [0, 4]):
        out = tmp_path / "_".join(map(str, folds))
        rows = read_csv(predict_folder(load_predictor(trained_2d, folds=folds, backend="torch"), images, str(out)))
        probs[tuple(folds)] = {r["case_id"]: float(r["finding_prob_present"]) for r in rows}
    for case, p in probs[(0, 4)].items():
        assert p == pytest.approx((probs[(0,)][case] + probs[(4,)][case]) / 2, abs=1e-6)


def test_model_folder_alone_predicts_without_raw_or_preprocessed_data(trained_2d, dataset_2d, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(trained_2d, model, ignore=shutil.ignore_patterns("validation", "*.png"))
    images = tmp_path / "images"
    shutil.copytree(os.path.join(dataset_2d.raw_folder, "imagesTs"), images)
    out = tmp_path / "pred"
    gone = str(tmp_path / "does_not_exist")
    run([sys.executable, "-m", "nnunet_mtl.cli.predict", "-m", str(model), "-i", str(images), "-o", str(out),
         "-f", "0", "-device", "cpu"], nnUNet_raw=gone, nnUNet_preprocessed=gone, nnUNet_results=gone)
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 3 and len(masks(out)) == 3


def test_parts_share_one_output_folder(trained_2d, dataset_2d, tmp_path):
    images = os.path.join(dataset_2d.raw_folder, "imagesTs")
    predictor = load_predictor(trained_2d, folds=[0], use_mirroring=False, backend="torch")
    for part in (0, 1):
        csv_path = predict_folder(predictor, images, str(tmp_path), num_parts=2, part_id=part)
    assert len(read_csv(csv_path)) == 3 and len(masks(tmp_path)) == 3


def test_process_engine_names_every_case_like_the_threaded_one(trained_2d, dataset_2d, tmp_path):
    """nnU-Net's own predict_from_files loop: each case's heads land in its own row."""
    images = os.path.join(dataset_2d.raw_folder, "imagesTs")
    predictor = load_predictor(trained_2d, folds=[0], use_mirroring=False, backend="torch")
    rows = {}
    for engine in ("threads", "processes"):
        csv_path = predict_folder(predictor, images, str(tmp_path / engine), engine=engine,
                                  num_processes_preprocessing=1, num_processes_export=1)
        rows[engine] = {r["case_id"]: float(r["finding_prob_present"]) for r in read_csv(csv_path)}
    assert len(rows["threads"]) == 3 and rows["processes"].keys() == rows["threads"].keys()
    for case, p in rows["threads"].items():
        assert rows["processes"][case] == pytest.approx(p, abs=1e-6)
    assert len(set(rows["threads"].values())) == 3


def _tile_sums(predictor, data):
    """Each tile's own pool sums (its unmirrored forward, its share of each voxel), tile by tile, with nnU-Net's
    slicers."""
    padded, slicers, _ = predictor.padded_tiles(data)
    shares = tile_weights(padded.shape[1:], slicers, predictor.configuration_manager.patch_size,
                          predictor.use_gaussian, torch.device("cpu"))
    net = predictor.mtl_network
    with torch.inference_mode():
        return [net.pooled(padded[sl][None], None, False, w[None])[1] for sl, w in zip(slicers, shares)]


def test_the_case_readout_pools_every_tile_not_the_last(trained_2d):
    """A lesion only in the first tile changes the case's outputs, the last tile's pools stay as they were: the
    heads read the pools of every tile added up (one case, one read-out), not the last tile's."""
    predictor = load_predictor(trained_2d, folds=[0], use_mirroring=False, backend="torch")
    rng = np.random.default_rng(0)
    base = torch.from_numpy(rng.normal(0, 0.3, (1, 1, 64, 192)).astype(np.float32))
    lesion = base.clone()
    lesion[..., 16:48, 8:40] += 3.0  # inside the first tile only (tiles start at x = 0, 64, 128)
    tiles_base, tiles_lesion = _tile_sums(predictor, base), _tile_sums(predictor, lesion)
    assert len(tiles_base) >= 3
    assert all(torch.equal(tiles_base[-1][k], tiles_lesion[-1][k]) for k in tiles_base[-1]), "the last tile"
    assert any(not torch.equal(tiles_base[0][k], tiles_lesion[0][k]) for k in tiles_base[0]), "the first tile"
    case_base = predictor.case_pools(base)[0]
    for k, v in case_base.items():  # the case's pools are its tiles' pools added up
        assert torch.allclose(v, sum(t[k] for t in tiles_base), rtol=1e-5, atol=1e-4), k
    out_base = predictor.predict_case(base)[1].outputs["finding"]
    out_lesion = predictor.predict_case(lesion)[1].outputs["finding"]
    assert np.abs(out_lesion - out_base).max() > 1e-6
    assert out_base.sum() == pytest.approx(1.0, abs=1e-5)


def test_heads_come_from_the_same_forwards_as_the_stock_logits(trained_2d):
    """The mask pass is nnU-Net's (logits equal a stock predictor's on the same weights, mirroring on), and the
    case's head outputs are the heads' read-out of its tiles' unmirrored pools."""
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    ours = load_predictor(trained_2d, folds=[0], backend="torch")  # the OpenVINO path: test_openvino_backend
    stock = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, device=torch.device("cpu"),
                            perform_everything_on_device=False, allow_tqdm=False)
    stock.initialize_from_trained_model_folder(trained_2d, (0,), "checkpoint_final.pth")
    data = torch.from_numpy(np.random.default_rng(1).normal(0, 1, (1, 1, 64, 150)).astype(np.float32))
    logits, heads = ours.predict_case(data, "x")
    assert torch.equal(logits, stock.predict_logits_from_preprocessed_data(data))
    assert ours.predict_logits_from_preprocessed_data(data).equal(logits)
    tiles = _tile_sums(ours, data)
    with torch.inference_mode():
        case = {k: sum(t[k] for t in tiles) for k in tiles[0]}
        expected = ours.mtl_network.read(case)["finding"][0].numpy()
    assert np.allclose(heads.outputs["finding"], expected, atol=1e-5)


def test_quick_classify_prints_one_line_per_file(trained_2d, tmp_path):
    from PIL import Image
    files = []
    for i in range(2):
        arr = (np.random.default_rng(i).random((64, 64)) * 255).astype(np.uint8)
        files.append(str(tmp_path / f"img{i}.png"))
        Image.fromarray(arr).save(files[-1])
    proc = run([sys.executable, "-m", "nnunet_mtl.cli.classify", trained_2d, *files, "-f", "0"])
    lines = [l for l in proc.stdout.splitlines() if l.startswith(str(tmp_path))]
    assert len(lines) == 2
    for line, f in zip(lines, files):
        name, cls, prob, secs, *review = line.split("\t")  # then the conformal set and flag, where fitted
        assert name == f and cls in ("absent", "present") and 0.5 <= float(prob) <= 1 and secs.endswith("s")


def test_both_engines_share_one_record_and_parts_publish_only_finished_rows(trained_2d, dataset_2d, tmp_path):
    """Rows recorded by nnU-Net's process loop are kept by a threaded re-run; each part reports its own
    cases and the table holds the rows finished so far."""
    images = os.path.join(dataset_2d.raw_folder, "imagesTs")
    predictor = load_predictor(trained_2d, folds=[0], use_mirroring=False, backend="torch")
    lines, out = [], str(tmp_path / "out")
    kw = dict(num_processes_preprocessing=1, num_processes_export=1, report=lines.append)
    predict_folder(predictor, images, out, engine="processes", **kw)
    predict_folder(predictor, images, out, **kw)
    assert lines == [f"{out}: 3 predicted, 0 kept, 0 removed", f"{out}: 0 predicted, 3 kept, 0 removed"]
    parts, lines[:] = str(tmp_path / "parts"), []
    assert len(read_csv(predict_folder(predictor, images, parts, num_parts=2, part_id=1, **kw))) == 1
    assert len(read_csv(predict_folder(predictor, images, parts, num_parts=2, part_id=0, **kw))) == 3
    assert lines == [f"{parts}: 1 predicted, 0 kept, 0 removed", f"{parts}: 2 predicted, 0 kept, 0 removed"]
