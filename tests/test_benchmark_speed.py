"""The pure parts of benchmarks/inference_speed.py: sizes and presets, replication of inputs under new names,
mask Dice, classify output parsing, probability comparison and the summary line (no nnU-Net runs)."""
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import speed_parts as sp  # noqa: E402


def test_repeats_per_size_one_value_or_one_per_size():
    assert sp.repeats_per_size([3], [4, 16, 64]) == {4: 3, 16: 3, 64: 3}
    assert sp.repeats_per_size([2, 2, 1], [4, 16, 64]) == {4: 2, 16: 2, 64: 1}
    with pytest.raises(ValueError, match="one per size"):
        sp.repeats_per_size([2, 1], [4, 16, 64])
    with pytest.raises(ValueError, match=">= 1"):
        sp.repeats_per_size([2, 0], [4, 16])


def test_check_sizes_sorts_and_refuses_bad_sizes():
    assert sp.check_sizes([64, 4, 16]) == [4, 16, 64]
    for bad in ([], [0], [4, 4], [-1, 3]):
        with pytest.raises(ValueError):
            sp.check_sizes(bad)


def test_presets_and_explicit_flags():
    import inference_speed as bench
    default = bench.parse_args([])
    assert default.sizes == [4, 16, 64] and default.images_2d == 200 and default.repeats_by_size == {4: 2, 16: 2, 64: 2}
    quick = bench.parse_args(["--quick"])
    assert quick.sizes == [4] and quick.images_2d < 20 and quick.repeats_by_size == {4: 1}
    assert bench.parse_args(["--quick", "--sizes", "2", "3"]).sizes == [2, 3]  # an explicit flag wins over the preset
    full = bench.parse_args(["--full"])
    assert full.full_size and tuple(full.shape) == (64, 128, 160) and full.sizes == [10, 40]
    assert bench.parse_args(["--sizes", "4", "16", "64", "--repeats", "2", "2", "1"]).repeats_by_size[64] == 1
    assert bench.parse_args(["--ours_args", "--tile_batch 4"]).ours_args == "--tile_batch 4"
    with pytest.raises(SystemExit):
        bench.parse_args(["--quick", "--full"])


def _write_case(folder, name, payload: bytes):
    with open(os.path.join(folder, name), "wb") as f:
        f.write(payload)


def test_replication_gives_n_distinct_names_cycling_over_the_sources(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    for cid in ("case_a", "case_b", "case_c"):
        _write_case(src, f"{cid}_0000.nii.gz", cid.encode())
        _write_case(src, f"{cid}_0001.nii.gz", cid.encode() + b"!")  # a second channel travels with its case
    (src / "dataset.json").write_text("{}")  # not a case
    pairs = sp.replicate_cases(str(src), str(dst), 7)
    assert len(pairs) == 7 and len(set(pairs)) == 7
    assert [pairs[k] for k in sorted(pairs)] == ["case_a", "case_b", "case_c"] * 2 + ["case_a"]
    files = sorted(os.listdir(dst))
    assert len(files) == 14 and "rep02_case_a_0001.nii.gz" in files and "rep02_case_b_0000.nii.gz" not in files
    assert (dst / "rep01_case_c_0001.nii.gz").read_bytes() == b"case_c!"
    # a smaller size in the same folder removes the extra cases
    assert len(sp.replicate_cases(str(src), str(dst), 2)) == 2
    assert sorted(os.listdir(dst)) == ["rep00_case_a_0000.nii.gz", "rep00_case_a_0001.nii.gz",
                                       "rep00_case_b_0000.nii.gz", "rep00_case_b_0001.nii.gz"]


def test_replica_names_need_sources():
    with pytest.raises(ValueError):
        sp.replica_names([], 3)


def test_dice_per_label_on_tiny_arrays():
    x = np.array([[0, 1, 1], [2, 2, 0]])
    y = np.array([[0, 1, 0], [2, 2, 2]])
    d = sp.dice_per_label(x, y, [1, 2, 3])
    assert d[1] == pytest.approx(2 * 1 / 3)
    assert d[2] == pytest.approx(2 * 2 / 5)
    assert d[3] == 1.0  # absent from both
    with pytest.raises(ValueError, match="shapes"):
        sp.dice_per_label(x, y[:, :2], [1])


def test_compare_mask_folders_reads_png_against_nifti(tmp_path):
    import SimpleITK as sitk
    from PIL import Image
    a, b = tmp_path / "stock", tmp_path / "ours"
    a.mkdir()
    b.mkdir()
    m = np.zeros((6, 8), np.uint8)
    m[1:4, 2:6] = 1
    m[4:, :3] = 2
    sitk.WriteImage(sitk.GetImageFromArray(m), str(a / "xr_000.nii.gz"))
    Image.fromarray(m).save(b / "xr_000.png")
    other = m.copy()
    other[1, 2] = 0  # one pixel of label 1 lost
    sitk.WriteImage(sitk.GetImageFromArray(m), str(a / "xr_001.nii.gz"))
    Image.fromarray(other).save(b / "xr_001.png")
    (b / "predictions.csv").write_text("case_id\n")
    r = sp.compare_mask_folders(str(a), str(b), [1, 2])
    assert r["cases"] == 2 and r["worst_case"] == "xr_001"
    assert r["dice_min"] == pytest.approx(2 * 11 / 23)
    assert r["identical_min"] == pytest.approx(47 / 48)
    os.remove(b / "xr_001.png")
    with pytest.raises(ValueError, match="different"):
        sp.compare_mask_folders(str(a), str(b), [1, 2])


def test_parse_classify_lines_and_seconds_per_image():
    lines = ["/d/xr_000.png\tpresent\t0.5123\t1.90s\n", "/d/xr_001.png\tabsent\t0.6000\t0.31s\n",
             "nnU-Net chatter\n", "/d/xr_002.png\tabsent\t0.7\t0.29s\n"]
    rows = sp.parse_classify_lines(lines)
    assert [r["seconds"] for r in rows] == [1.90, 0.31, 0.29] and rows[0]["class"] == "present"
    stats = sp.per_image_seconds([r["seconds"] for r in rows], [10.0, 10.4, 10.7])
    assert stats["median_column"] == pytest.approx(0.30) and stats["mean_gap"] == pytest.approx(0.35)
    assert stats["first_file"] == 1.90
    with pytest.raises(ValueError, match="ERROR|failed"):
        sp.parse_classify_lines(["/d/x.png\tERROR\tcannot read\n"])
    with pytest.raises(ValueError):
        sp.per_image_seconds([0.3], [1.0])


def test_probability_difference():
    a = {"c1": {"case_id": "c1", "t_prob_x": "0.25", "t_prob_y": "0.75", "t": "y"}}
    b = {"c1": {"case_id": "c1", "t_prob_x": "0.2", "t_prob_y": "0.8", "t": "y"}}
    assert sp.max_probability_difference(a, b) == pytest.approx(0.05)
    assert sp.max_probability_difference(a, a) == 0.0
    with pytest.raises(ValueError):
        sp.max_probability_difference(a, {"c2": b["c1"]})


def test_ratio_uses_medians():
    assert sp.ratio([40.0, 42.0, 100.0], [20.0, 21.0, 22.0]) == pytest.approx(2.0)


def test_summary_line_round_trips():
    line = sp.format_summary({"ratio_3d_4": 2.4137, "dice_min": 0.99991, "classify_s_per_image": None,
                              "cases": 64, "load_start": float("nan")})
    assert line == "summary: ratio_3d_4=2.414 dice_min=0.9999 classify_s_per_image=na cases=64 load_start=na"
    assert sp.parse_summary(line)["dice_min"] == "0.9999"
    with pytest.raises(ValueError):
        sp.format_summary({"bad key": 1.0})


def test_profiled_cli_counts_outermost_forwards_and_loading_once():
    """The profile's network timer: hooks attached after loading count each outermost forward of the network or
    of its encoder alone (encoder-only heads path), never the encoder inside a full forward twice."""
    import torch
    import profiled_cli as pc

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = torch.nn.Linear(3, 3)
            self.head = torch.nn.Linear(3, 1)

        def forward(self, x):
            return self.head(self.encoder(x))

    class Base:
        def initialize_from_trained_model_folder(self):
            self.network = Net()

    class Sub(Base):
        def initialize_from_trained_model_folder(self):  # calls super(): loading must count once
            super().initialize_from_trained_model_folder()

    acc = {"network": 0.0, "network_calls": 0, "initialize_from_trained_model_folder": 0.0,
           "_depth_initialize_from_trained_model_folder": 0}
    for cls in (Base, Sub):
        pc._timed(cls, "initialize_from_trained_model_folder", acc, after=pc._hook_network(acc))
    p = Sub()
    p.initialize_from_trained_model_folder()
    assert acc["network_calls"] == 0 and acc["initialize_from_trained_model_folder"] > 0
    x = torch.zeros(2, 3)
    p.network(x)
    p.network(x)
    p.network.encoder(x)
    assert acc["network_calls"] == 3 and acc["network"] > 0
    assert len(p.network._forward_hooks) == 1  # hooks attached once, by the outermost load only


def test_compare_backends_adds_ours_on_torch_and_each_run_starts_cold(tmp_path):
    """--compare_backends times ours a second time with --backend torch; ours' OpenVINO cache is the work folder's
    and run_pair empties it before every run unless --warm_cache."""
    from types import SimpleNamespace
    import inference_speed as bench
    ds = SimpleNamespace(id=941, configuration="3d_fullres", plans="P")
    run = bench.Run(bench.parse_args(["--compare_backends", "--no_pipeline"]), "cpu", str(tmp_path))
    sides = run.side_args(ds, "MODEL")
    assert set(sides) == {"stock", "ours", "ours_torch"} and sides["ours_torch"] == sides["ours"] + ["--backend", "torch"]
    assert run.env["nnunet_mtl_openvino_cache"] == os.path.join(str(tmp_path), "openvino_cache")
    assert "ours_torch" not in bench.Run(bench.parse_args([]), "cpu", str(tmp_path)).side_args(ds, "MODEL")
    cache = tmp_path / "cache"
    seen = []

    def fake_run(cmd, log, env):
        seen.append(cache.exists())
        cache.mkdir(exist_ok=True)  # what a run leaves behind
        return 1.0
    bench.run_timed, original = fake_run, bench.run_timed
    try:
        bench.run_pair("t", {"ours": ["x", "{out}"]}, 2, str(tmp_path), {}, cold=(str(cache),))
        bench.run_pair("t", {"ours": ["x", "{out}"]}, 2, str(tmp_path), {})
    finally:
        bench.run_timed = original
    assert seen == [False, False, True, True]


def test_the_pipelines_default_inference_is_timed_beside_ours(tmp_path):
    """Without --no_pipeline the pipeline's default inference path runs on ours' inputs, with its own flags."""
    from types import SimpleNamespace
    import inference_speed as bench
    ds = SimpleNamespace(id=941, configuration="3d_fullres", plans="P")
    run = bench.Run(bench.parse_args([]), "cpu", str(tmp_path))
    sides = run.side_args(ds, "MODEL")
    assert set(sides) == {"stock", "ours", "pipeline"}
    assert sides["pipeline"][:3] == ["--inference_only", "--model_dir", "MODEL"] and "--backend" not in sides["pipeline"]
    assert run.io_args("pipeline", "IN") == ["--test_input", "IN", "--test_output", "{out}"]
    assert run.io_args("ours", "IN") == ["-i", "IN", "-o", "{out}"]
    assert bench.input_of("pipeline") == bench.input_of("ours_torch") == "ours" and bench.input_of("stock") == "stock"


def test_engine_ray_times_ours_on_ray_with_each_worker_count(tmp_path):
    """--engine ray adds ours with --engine ray --ray_workers K per K, on ours' inputs, with ours' CLI."""
    from types import SimpleNamespace
    import inference_speed as bench
    ds = SimpleNamespace(id=941, configuration="3d_fullres", plans="P")
    sides = bench.Run(bench.parse_args(["--engine", "ray", "--ray_workers", "1", "3", "--no_pipeline"]), "cpu",
                      str(tmp_path)).side_args(ds, "MODEL")
    assert set(sides) == {"stock", "ours", "ray_1", "ray_3"}
    assert sides["ray_3"] == sides["ours"] + ["--engine", "ray", "--ray_workers", "3"]
    assert bench.command_of("ray_3") == "ours" and bench.input_of("ray_1") == "ours"


def test_startup_and_per_case_fit():
    start, per_case = sp.fit_startup_per_case([(4, 14.0), (16, 26.0), (64, 74.0)])
    assert start == pytest.approx(10.0) and per_case == pytest.approx(1.0)
    assert sp.fit_startup_per_case([(4, 10.0), (4, 11.0)]) is None
