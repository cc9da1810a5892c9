"""Benchmark (not a test): end-to-end prediction time at scale, stock ``nnUNetv2_predict`` vs ``nnunet_mtl_predict``.

Same model folder (an nnUNetTrainerMTL model), same inputs, one run. Each variant is a fresh subprocess
timed from launch to exit, because that is what a user waits for: process start-up, model loading,
preprocessing, sliding window, resampling and export all count. Both sides keep the settings that
matter for accuracy (test-time mirroring on, step size 0.5, passed explicitly); a speed-up from dropping
either does not count. Per input size the two run interleaved (rotating order), ``--repeats`` times; the
table shows medians, stock/ours, and the Dice of ours' masks to stock's for every case and label.

Inputs:
* 3D, ``--sizes`` (default 4 16 64): the synthetic test cases (4 by default) copied under new names
  (``rep00_<case>``, ``rep01_<case>``, ...) until each size is reached: replicas are identical images.
* 2D, ``--images_2d`` (default 200): 256x256 synthetic radiographs as 8-bit PNG files, made once; the
  model is planned for them (plain plans, 2d, 6 stages, features capped at 32). Ours reads the PNGs
  (its conversion counts in its time). Stock cannot read PNGs without a dataset.json of their own, so it
  gets the NIfTI files our conversion writes (the same conversion, run once before the timing): its
  time excludes that conversion; the conversion's own time is printed, and a second ratio adds it.
* the pipeline's default inference (``pipeline.py --inference_only --model_dir MODEL``, its default backend) on
  ours' inputs, timed beside them (``--no_pipeline`` leaves it out): the same engine, with the pipeline's start-up.
* classify: ``nnunet_mtl_classify`` over ``--classify_images`` of the PNGs (each tile once, no mirrors: the
  heads read the unmirrored forward); seconds per image after the model is loaded (its per-file ``seconds``
  column; and the gap between result lines).

``--engine ray``: ours also with ``--engine ray --ray_workers K`` for each K of ``--ray_workers`` (default 1 2), each
run starting its own local Ray cluster, in the same run as stock and ours' threads engine; masks and probabilities
compared with the threads engine's; from the 3D sizes a fit ``start-up + cases x per-case`` and, stated as such,
a projection for N workers.

``--quick``: a smoke run of a few minutes (4 3D cases, 8 PNGs, 1 repeat). ``--full``: the GPU sizes
(nnU-Net's full-size ResEnc M on 64x128x160 crops). ``--profile``: after the timing, one run of each side
with timers (``profiled_cli.py``) says what bounded it. The last line is ``summary: key=value ...``.

    python benchmarks/inference_speed.py --base_dir /tmp/mtl_bench --device cpu            # 2-core CPU run
    python benchmarks/inference_speed.py --base_dir /tmp/mtl_bench --device cpu --quick    # smoke run
"""
import argparse
import csv
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import (add_dataset_args, describe, ensure_model, load_average, machine_lines,  # noqa: E402
                    prepare_dataset, set_runtime_env)
from speed_parts import (PRESETS, check_sizes, compare_mask_folders, fit_startup_per_case,  # noqa: E402
                         format_summary, max_probability_difference, parse_classify_lines, per_image_seconds,
                         ratio, replicate_cases, repeats_per_size)
from nnunet_mtl.inference.openvino_backend import CACHE_ENV  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
STOCK_PY = ("import sys; from nnunetv2.inference.predict_from_raw_data import predict_entry_point as m; "
            "sys.argv[0] = 'nnUNetv2_predict'; m()")
CLIS = {"stock": ("nnUNetv2_predict", ["-c", STOCK_PY]),
        "ours": ("nnunet_mtl_predict", ["-m", "nnunet_mtl.cli.predict"]),
        "pipeline": ("nnunet_mtl_pipeline", ["-m", "nnunet_mtl.cli.pipeline"]),
        "classify": ("nnunet_mtl_classify", ["-m", "nnunet_mtl.cli.classify"])}


def cli(name: str, launcher: str) -> list:
    console, python_args = CLIS[name]
    return [console] if launcher == "console" else [sys.executable] + python_args


def default_launcher() -> str:
    """Console scripts when installed (what users type); ``python -c``/``-m`` otherwise (GPU image)."""
    return "console" if all(shutil.which(c) for c, _ in CLIS.values()) else "python"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_args(p)
    g = p.add_argument_group("inference at scale")
    g.add_argument("--quick", action="store_true", help="smoke run: 4 3D cases, 8 PNGs, 1 repeat (a few minutes)")
    g.add_argument("--full", action="store_true", help="GPU sizes: full-size ResEnc M on 64x128x160, 10 and 40 cases")
    g.add_argument("--sizes", type=int, nargs="+", help="3D cases per run (replicated test cases); default 4 16 64")
    g.add_argument("--repeats", type=int, nargs="+", help="runs per side: one value, or one per size (default 2)")
    g.add_argument("--images_2d", type=int, help="2D PNG radiographs per run (default 200; 0: no 2D part)")
    g.add_argument("--repeats_2d", type=int, help="runs per side for the 2D part (default 2)")
    g.add_argument("--classify_images", type=int, help="PNGs given to nnunet_mtl_classify (default 50; 0: skip)")
    g.add_argument("--cases_2d", type=int, default=8, help="training cases of the 2D model")
    g.add_argument("--dataset_id_2d", type=int, default=942)
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--fold", default="0")
    g.add_argument("--trainer", default="nnUNetTrainerMTL")
    g.add_argument("--train_iterations", type=int, default=3, help="iterations to train each model being timed")
    g.add_argument("--launcher", choices=["console", "python"], default=None,
                   help="console scripts, or python -c/-m (where the console scripts are not installed)")
    g.add_argument("--stock_args", "--stock_extra", default="", help="extra arguments for nnUNetv2_predict (quoted)")
    g.add_argument("--ours_args", "--ours_extra", default="",
                   help="extra arguments for nnunet_mtl_predict (quoted), e.g. a speed option to compare")
    g.add_argument("--no_pipeline", action="store_true",
                   help="leave out the pipeline's default inference (pipeline.py --inference_only --model_dir M, "
                        "timed by default beside ours)")
    g.add_argument("--compare_backends", action="store_true",
                   help="also time ours with --backend torch (nnU-Net's own network execution) in the same run, and "
                        "compare its masks and case probabilities with ours' default (OpenVINO on the CPU)")
    g.add_argument("--warm_cache", action="store_true",
                   help="keep ours' converted OpenVINO models between runs (default: every run starts with an empty "
                        "cache and pays the conversion, as a first run does)")
    g.add_argument("--reference_probabilities", default=None,
                   help="folder of an earlier run's probabilities/ (WORK_DIR/probabilities): ours' case "
                        "probabilities are compared with it")
    g.add_argument("--engine", choices=["ray"], default=None,
                   help="ray: also time ours with --engine ray (a local Ray cluster started by each run) with each of "
                        "--ray_workers actors, in the same run, and project the time for N workers from the fit "
                        "start-up + per-case time (a projection, not a measurement)")
    g.add_argument("--ray_workers", type=int, nargs="+", default=[1, 2], help="--engine ray: actors per timed variant "
                                                                               "(default 1 2)")
    g.add_argument("--profile", action="store_true", help="after timing: one timed-phases run of each side")
    g.add_argument("--profile_size", type=int, default=None, help="3D cases of the profile runs (default: 16 or "
                                                                    "the smallest size)")
    g.add_argument("--profile_images", type=int, default=None, help="PNGs of the 2D profile runs (default: all)")
    g.add_argument("--work_dir", default=None, help="outputs and logs (default: BASE_DIR/inference_bench)")
    return p


def parse_args(argv=None) -> argparse.Namespace:
    """Flags; --quick / --full replace the defaults (flags given explicitly still win)."""
    p = build_parser()
    first, _ = p.parse_known_args(argv)
    if first.quick and first.full:
        p.error("--quick and --full exclude each other")
    preset = dict(PRESETS["quick" if first.quick else "full" if first.full else "default"])
    p.set_defaults(**preset)
    args = p.parse_args(argv)
    args.sizes = check_sizes(args.sizes)
    args.repeats_by_size = repeats_per_size(args.repeats, args.sizes)
    return args


# ---------------------------------------------------------------------------------------------- running
def run_timed(cmd: list, log_path: str, env: dict) -> float:
    """Wall seconds from launch to exit; output lines go to the log with their arrival time; a failing
    command stops the benchmark with its log."""
    start = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                                errors="replace")
        for line in proc.stdout:
            log.write(f"{time.perf_counter() - start:8.2f} {line}")
        rc = proc.wait()
    seconds = time.perf_counter() - start
    if rc != 0:
        with open(log_path) as f:
            tail = f.read()[-4000:]
        raise SystemExit(f"command failed (rc {rc}): {shlex.join(cmd)}\n--- log tail ---\n{tail}")
    return seconds


def run_pair(name: str, variants: dict, repeats: int, work: str, env: dict, cold: tuple = ()) -> dict:
    """Run stock and ours ``repeats`` times, interleaved in rotating order, each into an empty folder
    (ours would keep masks already there); the folders in ``cold`` are emptied before every run (ours'
    OpenVINO cache); returns {variant: [seconds]} and leaves the last outputs."""
    names = list(variants)
    times = {n: [] for n in names}
    for r in range(repeats):
        for n in names[r % len(names):] + names[:r % len(names)]:
            out = os.path.join(work, f"out_{name}_{n}")
            shutil.rmtree(out, ignore_errors=True)
            for folder in cold:
                shutil.rmtree(folder, ignore_errors=True)
            before = load_average()
            s = run_timed([a.replace("{out}", out) for a in variants[n]], os.path.join(work, f"log_{name}_{n}_{r}.txt"),
                          env)
            times[n].append(s)
            print(f"[bench] {name} repeat {r} {n:5s} {s:8.2f} s   load {before} -> {load_average()}", flush=True)
    return times


def run_classify(cmd: list, log_path: str, env: dict) -> dict:
    """nnunet_mtl_classify once: its result lines with arrival times; stderr (nnU-Net's chatter) to the log."""
    start = time.perf_counter()
    lines, arrivals = [], []
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env, text=True)
        for line in proc.stdout:
            arrivals.append(time.perf_counter() - start)
            lines.append(line)
        rc = proc.wait()
    wall = time.perf_counter() - start
    if rc != 0:
        raise SystemExit(f"classify failed (rc {rc}): see {log_path}")
    rows = parse_classify_lines(lines)
    result_arrivals = [t for t, line in zip(arrivals, lines) if parse_classify_lines([line])]
    stats = per_image_seconds([r["seconds"] for r in rows], result_arrivals)
    stats.update(wall=wall, first_line_at=result_arrivals[0])
    return stats


def run_profiled(which: str, args: list, log_path: str, env: dict) -> dict:
    """One run through profiled_cli.py; its [profile] line plus the launch-to-exit wall."""
    cmd = [sys.executable, os.path.join(HERE, "profiled_cli.py"), which] + args
    wall = run_timed(cmd, log_path, env)
    with open(log_path) as f:
        found = [line.split("[profile] ", 1)[1] for line in f if "[profile] " in line]
    if not found:
        raise SystemExit(f"no [profile] line in {log_path}")
    prof = json.loads(found[-1])
    prof["wall"] = wall
    prof["interpreter_start_exit"] = wall - prof["total"]
    return prof


def read_rows(path: str) -> dict:
    with open(path, newline="") as f:
        return {row["case_id"]: row for row in csv.DictReader(f)}


def keep_probabilities(out: str, tag: str, work: str, reference: str) -> str:
    """Copy ours' predictions.csv to WORK/probabilities/TAG.csv; compared with ``reference`` when given."""
    src = os.path.join(out, "predictions.csv")
    if not os.path.isfile(src):
        return "no predictions.csv"
    dst_dir = os.path.join(work, "probabilities")
    os.makedirs(dst_dir, exist_ok=True)
    shutil.copyfile(src, os.path.join(dst_dir, f"{tag}.csv"))
    if not reference:
        return "kept"
    ref = os.path.join(reference, f"{tag}.csv")
    if not os.path.isfile(ref):
        return f"no reference {ref}"
    return f"max |p - p_ref| {max_probability_difference(read_rows(src), read_rows(ref)):.2e}"


def labels_of(raw_folder: str) -> list:
    with open(os.path.join(raw_folder, "dataset.json")) as f:
        return [int(v) for v in json.load(f)["labels"].values() if int(v) != 0]


def convert_for_stock(png_dir: str, model: str, dst_parent: str, fold: str) -> tuple:
    """The NIfTI files stock reads: our own conversion of the PNGs (as ``nnunet_mtl_predict`` does it),
    run once; returns (folder, seconds). The predictor is loaded only for the model's channel facts."""
    from nnunet_mtl.inference.folders import prepare_folder
    from nnunet_mtl.inference.loader import load_predictor, model_inputs
    facts = model_inputs(load_predictor(model, [fold], device="cpu", backend="torch"))
    start = time.perf_counter()
    prepared = prepare_folder(png_dir, dst_parent, facts)
    return prepared.folder, time.perf_counter() - start


def command_of(variant: str) -> str:
    """The CLI of a timed variant: ``ours_torch`` is ours with ``--backend torch``, ``ray_K`` ours with
    ``--engine ray --ray_workers K``."""
    return "ours" if variant == "ours_torch" or variant.startswith("ray_") else variant


def input_of(variant: str) -> str:
    """Whose input folder a variant reads: stock its own (NIfTI for 2D), every other one ours'."""
    return "stock" if variant == "stock" else "ours"


# ---------------------------------------------------------------------------------------------- main
class Run:
    """What every timed command shares: launcher, nnU-Net environment, the settings both sides get."""

    def __init__(self, args, device: str, work: str):
        self.args, self.device, self.work = args, device, work
        self.launcher = args.launcher or default_launcher()
        self.env = dict(os.environ)  # nnUNet_raw/_preprocessed/_results and nnUNet_extTrainer (use_base_dir)
        self.common = ["-f", args.fold, "-device", device, "-step_size", "0.5"]  # mirroring on: the default
        self.stock_extra, self.ours_extra = shlex.split(args.stock_args), shlex.split(args.ours_args)
        self.ov_cache = os.path.join(work, "openvino_cache")  # ours' converted models (nnunet_mtl.inference.openvino_backend)
        self.env[CACHE_ENV] = self.ov_cache
        self.cold = () if args.warm_cache else (self.ov_cache,)  # emptied before every run

    def side_args(self, ds, model: str) -> dict:
        """Arguments after -i/-o: stock names the dataset, plans and trainer; ours the model folder."""
        sides = {"stock": ["-d", str(ds.id), "-c", ds.configuration, "-tr", self.args.trainer, "-p", ds.plans]
                 + self.common + self.stock_extra, "ours": ["-m", model] + self.common + self.ours_extra}
        if self.args.compare_backends:
            sides["ours_torch"] = sides["ours"] + ["--backend", "torch"]
        if self.args.engine == "ray":  # the same command on Ray actors (each run starts its own local cluster)
            for k in self.args.ray_workers:
                sides[f"ray_{k}"] = sides["ours"] + ["--engine", "ray", "--ray_workers", str(k)]
        if not self.args.no_pipeline:  # the pipeline's default inference path on the same model and inputs
            sides["pipeline"] = ["--inference_only", "--model_dir", model, "--fold", self.args.fold, "--device",
                                 self.device, "--step_size", "0.5", "--base_dir", os.path.join(self.work, "pipeline")]
        return sides

    @staticmethod
    def io_args(variant: str, inputs: str) -> list:
        """Input and output folder flags: the pipeline names them differently."""
        if variant == "pipeline":
            return ["--test_input", inputs, "--test_output", "{out}"]
        return ["-i", inputs, "-o", "{out}"]

    def time_inputs(self, tag: str, kind: str, n: int, inputs: dict, ds, model: str, repeats: int) -> dict:
        """Time both sides on their inputs ({side: folder}); the row of the table."""
        side = self.side_args(ds, model)
        variants = {k: cli(command_of(k), self.launcher) + self.io_args(k, inputs[input_of(k)]) + side[k]
                    for k in side}
        for k, v in variants.items():
            print(f"[bench] {tag} {k}: {shlex.join(v)}", flush=True)
        times = run_pair(tag, variants, repeats, self.work, self.env, self.cold)
        outs = {k: os.path.join(self.work, f"out_{tag}_{k}") for k in variants}
        row = dict(tag=tag, kind=kind, n=n, times=times,
                   dice=compare_mask_folders(outs["stock"], outs["ours"], labels_of(ds.raw_folder)),
                   probs=keep_probabilities(outs["ours"], tag, self.work, self.args.reference_probabilities))
        for k in (v for v in outs if v.startswith("ray_")):
            row.setdefault("ray_vs_ours", {})[k] = dict(
                dice=compare_mask_folders(outs[k], outs["ours"], labels_of(ds.raw_folder)),
                max_prob_diff=max_probability_difference(read_rows(os.path.join(outs["ours"], "predictions.csv")),
                                                         read_rows(os.path.join(outs[k], "predictions.csv"))))
        if "ours_torch" in outs:
            row["torch_vs_ours"] = dict(
                dice=compare_mask_folders(outs["ours_torch"], outs["ours"], labels_of(ds.raw_folder)),
                max_prob_diff=max_probability_difference(read_rows(os.path.join(outs["ours"], "predictions.csv")),
                                                         read_rows(os.path.join(outs["ours_torch"],
                                                                                "predictions.csv"))))
        return row

    def classify_args(self, model: str, files: list) -> list:
        return ["-m", model, "--target", "finding", "-f", self.args.fold, "-device", self.device] + files

    def profile(self, label: str, inputs: dict, ds, model: str) -> dict:
        """One profiled run of each side ({label side: phases})."""
        out = {}
        for which, extra in self.side_args(ds, model).items():
            folder = os.path.join(self.work, f"profile_{label}_{which}")
            shutil.rmtree(folder, ignore_errors=True)
            for cold in self.cold:
                shutil.rmtree(cold, ignore_errors=True)
            if which == "pipeline":  # profiled_cli times the predict and classify commands
                continue
            out[f"{label} {which}"] = run_profiled(command_of(which), ["-i", inputs[input_of(which)], "-o", folder]
                                                   + extra,
                                                   os.path.join(self.work, f"log_profile_{label}_{which}.txt"),
                                                   self.env)
        return out


def linked_pngs(pngs: list, folder: str) -> str:
    """A folder holding exactly these PNGs (hard links), the input folder of both predict commands."""
    names = sorted(os.path.basename(p) for p in pngs)
    if not os.path.isdir(folder) or sorted(os.listdir(folder)) != names:
        shutil.rmtree(folder, ignore_errors=True)
        os.makedirs(folder)
        for p in pngs:
            os.link(p, os.path.join(folder, os.path.basename(p)))
    return folder


def main(argv=None):
    args = parse_args(argv)
    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    set_runtime_env(device)
    if not args.base_dir:
        import tempfile
        args.base_dir = tempfile.mkdtemp(prefix="mtl_bench_")
    base = os.path.abspath(args.base_dir)
    loads = {"start": load_average()}
    wall_start = time.perf_counter()
    ds = prepare_dataset(args)
    fold = int(args.fold) if args.fold != "all" else args.fold
    model3d = ensure_model(ds, args.trainer, fold, args.train_iterations, device)
    work = os.path.abspath(args.work_dir or os.path.join(base, "inference_bench"))
    os.makedirs(work, exist_ok=True)
    run = Run(args, device, work)

    rows, summary, profiles = [], {}, {}
    for n in args.sizes:
        inputs = os.path.join(base, f"inputs_3d_{n}")
        replicate_cases(ds.test_images, inputs, n)
        rows.append(run.time_inputs(f"3d_{n}", "3D", n, {"stock": inputs, "ours": inputs}, ds, model3d,
                                    args.repeats_by_size[n]))
        summary[f"ratio_3d_{n}"] = ratio(rows[-1]["times"]["stock"], rows[-1]["times"]["ours"])
        if "pipeline" in rows[-1]["times"]:
            summary[f"ratio_pipeline_3d_{n}"] = ratio(rows[-1]["times"]["stock"], rows[-1]["times"]["pipeline"])

    classify = conversion_s = ds2 = None
    if args.images_2d or args.classify_images:
        from radiograph_setup import prepare_radiographs, write_pngs
        ds2 = prepare_radiographs(base, args.dataset_id_2d, args.cases_2d, args.seed, args.num_processes)
        model2d = ensure_model(ds2, args.trainer, fold, args.train_iterations, device)
        n_png = max(args.images_2d, args.classify_images)
        pngs = write_pngs(os.path.join(base, f"png_{n_png}"), n_png, seed=args.seed + 1000)
    if args.images_2d:
        png_dir = linked_pngs(pngs[:args.images_2d], os.path.join(base, f"png_only_{args.images_2d}"))
        stock_dir = os.path.join(base, f"stock_inputs_2d_{args.images_2d}")
        shutil.rmtree(stock_dir, ignore_errors=True)
        stock_in, conversion_s = convert_for_stock(png_dir, model2d, stock_dir, args.fold)
        print(f"[bench] 2D: {args.images_2d} PNGs converted for stock in {conversion_s:.2f} s: {stock_in}", flush=True)
        tag = f"2d_{args.images_2d}"
        rows.append(run.time_inputs(tag, "2D PNG", args.images_2d, {"stock": stock_in, "ours": png_dir}, ds2, model2d,
                                    args.repeats_2d))
        times = rows[-1]["times"]
        summary[f"ratio_{tag}"] = ratio(times["stock"], times["ours"])
        if "pipeline" in times:
            summary[f"ratio_pipeline_{tag}"] = ratio(times["stock"], times["pipeline"])
        summary[f"ratio_{tag}_incl_conversion"] = ratio([t + conversion_s for t in times["stock"]], times["ours"])
    if args.classify_images:
        cmd = cli("classify", run.launcher) + run.classify_args(model2d, pngs[:args.classify_images])
        print(f"[bench] classify: {shlex.join(cmd[:-args.classify_images])} <{args.classify_images} PNGs>", flush=True)
        before = load_average()
        classify = run_classify(cmd, os.path.join(work, "log_classify.txt"), run.env)
        classify["load"] = f"{before} -> {load_average()}"
        print(f"[bench] classify: {classify}", flush=True)

    if args.profile:
        n = args.profile_size or (16 if 16 in args.sizes else args.sizes[0])
        inputs = os.path.join(base, f"inputs_3d_{n}")
        replicate_cases(ds.test_images, inputs, n)
        profiles.update(run.profile(f"3d_{n}", {"stock": inputs, "ours": inputs}, ds, model3d))
        if args.images_2d:
            k = min(args.profile_images or args.images_2d, args.images_2d)
            sub = linked_pngs(pngs[:k], os.path.join(base, f"png_only_{k}"))
            sub_stock = os.path.join(base, f"stock_inputs_2d_{k}")
            shutil.rmtree(sub_stock, ignore_errors=True)
            profiles.update(run.profile(f"2d_{k}", {"stock": convert_for_stock(sub, model2d, sub_stock, args.fold)[0],
                                                    "ours": sub}, ds2, model2d))
        if args.classify_images:
            profiles[f"classify_{args.classify_images}"] = run_profiled(
                "classify", run.classify_args(model2d, pngs[:args.classify_images]),
                os.path.join(work, "log_profile_classify.txt"), run.env)
    loads["end"] = load_average()
    with open(os.path.join(work, "results.json"), "w") as f:  # the raw numbers, whatever the report below does
        json.dump({"rows": rows, "summary": summary, "classify": classify, "profiles": profiles, "loads": loads,
                   "conversion_2d_s": conversion_s}, f, indent=1, default=str)
    report(args, ds, ds2, rows, conversion_s, classify, profiles, loads, device, run.launcher, work,
           time.perf_counter() - wall_start, summary)


def report(args, ds, ds2, rows, conversion_s, classify, profiles, loads, device, launcher, work, wall, summary):
    print("\n=== inference_speed at scale: end to end, process start included; mirroring on, step 0.5 ===")
    for line in machine_lines(device):
        print(line)
    print(f"load average (1/5/15 min) at start: {loads['start']}; at end: {loads['end']}; wall {wall / 60:.1f} min")
    print(f"launcher: {launcher}; stock extra: {args.stock_args!r}; ours extra: {args.ours_args!r}; logs: {work}")
    print(f"3D model: {describe(ds)}; {args.trainer} fold {args.fold}, trained {args.train_iterations} iterations; "
          f"inputs: the {len(os.listdir(ds.test_images))} test cases {tuple(args.shape)} replicated under new names")
    if ds2 is not None:
        print(f"2D model: {describe(ds2)}; inputs: 256x256 8-bit PNGs")
    if conversion_s is not None:
        print(f"2D: stock reads the NIfTI files of our PNG conversion, made once before timing in {conversion_s:.2f} s "
              f"(excluded from stock's times; the 'incl. conversion' ratio adds it); ours converts inside its run")
    header = ("| input | cases | stock s (median) | ours s (median) | stock runs | ours runs | stock/ours "
              "| Dice ours vs stock min / mean | ours' probabilities |")
    print("\n" + header)
    print("|" + "---|" * header.count(" |"))
    for r in rows:
        st, ou = r["times"]["stock"], r["times"]["ours"]
        print(f"| {r['kind']} | {r['n']} | {statistics.median(st):.1f} | {statistics.median(ou):.1f} | "
              f"{' '.join(f'{t:.1f}' for t in st)} | {' '.join(f'{t:.1f}' for t in ou)} | **{ratio(st, ou):.2f}** | "
              f"{r['dice']['dice_min']:.4f} / {r['dice']['dice_mean']:.4f} | {r['probs']} |")
    for r in rows:
        d = r["dice"]
        print(f"{r['tag']}: {d['cases']} cases, Dice per case and label min {d['dice_min']:.6f} mean "
              f"{d['dice_mean']:.6f}; identical pixels min {d['identical_min']:.6f}")
        if d["dice_min"] < 0.999:
            print(f"WARNING: {r['tag']}: ours' masks differ from stock (Dice {d['dice_min']:.4f} < 0.999, "
                  f"worst case {d['worst_case']})")
    for r in rows:
        if "pipeline" in r["times"]:
            st, pp, ou = r["times"]["stock"], r["times"]["pipeline"], r["times"]["ours"]
            print(f"{r['tag']}: the pipeline's default inference (pipeline.py --inference_only, same model, its default "
                  f"backend) {statistics.median(pp):.1f} s (runs {' '.join(f'{t:.1f}' for t in pp)}): stock/pipeline "
                  f"{ratio(st, pp):.2f}, pipeline/ours {ratio(pp, ou):.2f}")
    for r in rows:
        if "torch_vs_ours" in r:
            st, tt, ou = r["times"]["stock"], r["times"]["ours_torch"], r["times"]["ours"]
            c = r["torch_vs_ours"]
            print(f"{r['tag']}: ours with --backend torch {statistics.median(tt):.1f} s (runs "
                  f"{' '.join(f'{t:.1f}' for t in tt)}): stock/ours_torch {ratio(st, tt):.2f}, ours_torch/ours "
                  f"{ratio(tt, ou):.2f}; ours vs ours_torch masks Dice min {c['dice']['dice_min']:.6f}, identical "
                  f"pixels min {c['dice']['identical_min']:.6f}, case probabilities max |diff| {c['max_prob_diff']:.2e}")
            summary[f"ratio_torch_{r['tag']}"] = ratio(st, tt)
            summary[f"prob_diff_backends_{r['tag']}"] = f"{c['max_prob_diff']:.1e}"
    report_ray(args, rows, summary)
    if "ratio_2d_{}_incl_conversion".format(args.images_2d) in summary:
        print(f"2D ratio with stock's conversion added: {summary[f'ratio_2d_{args.images_2d}_incl_conversion']:.2f}")
    if classify:
        print(f"\nclassify ({classify['files']} PNGs, one process, each tile once): seconds per image after loading: "
              f"median of its per-file column {classify['median_column']:.3f} s, mean gap between result lines "
              f"{classify['mean_gap']:.3f} s (first file {classify['first_file']:.2f} s, left out); first result "
              f"{classify['first_line_at']:.1f} s after launch; wall {classify['wall']:.1f} s; load {classify['load']}")
    if profiles:
        print("\n| profile run (one each) | wall s | interpreter start + exit | imports | model load | network forward "
              "| other (pre/export, workers, I/O) |")
        print("|---|---|---|---|---|---|---|")
        for k, p in profiles.items():
            share = lambda x: f"{x:.1f} ({100 * x / p['wall']:.0f} %)"  # noqa: E731
            print(f"| {k} | {p['wall']:.1f} | {share(p['interpreter_start_exit'])} | {share(p['imports'])} | "
                  f"{share(p['load'])} | {share(p['network'])} [{p['network_calls']} calls] | {share(p['other'])} |")
    dices = [r["dice"]["dice_min"] for r in rows]
    summary.update(dice_min=min(dices) if dices else None,
                   classify_s_per_image=classify["median_column"] if classify else None,
                   classify_gap_s=classify["mean_gap"] if classify else None,
                   conversion_2d_s=conversion_s, load_start=float(loads["start"].split()[0]),
                   load_end=float(loads["end"].split()[0]))
    print(format_summary(summary))


def report_ray(args, rows, summary) -> None:
    """The Ray rows (same run as stock and ours' threads engine) and, from the 3D sizes, the fit
    ``wall = start-up + cases x per-case`` per worker count and the projection for more workers."""
    if args.engine != "ray":
        return
    print("\n| input | cases | ours threads s | " + " | ".join(f"ray {k} worker(s) s" for k in args.ray_workers)
          + " | stock/ray | ray vs threads: Dice min, probabilities max diff |")
    print("|" + "---|" * (4 + len(args.ray_workers)))
    for r in rows:
        t = r["times"]
        cells = " | ".join(f"{statistics.median(t[f'ray_{k}']):.1f}" for k in args.ray_workers)
        best = min((f"ray_{k}" for k in args.ray_workers), key=lambda v: statistics.median(t[v]))
        checks = "; ".join(f"{k}: {c['dice']['dice_min']:.4f}, {c['max_prob_diff']:.1e}"
                           for k, c in r["ray_vs_ours"].items())
        print(f"| {r['kind']} | {r['n']} | {statistics.median(t['ours']):.1f} | {cells} | "
              f"{ratio(t['stock'], t[best]):.2f} ({best}) | {checks} |")
        for k in args.ray_workers:
            summary[f"ratio_ray{k}_{r['tag']}"] = ratio(t["stock"], t[f"ray_{k}"])
            summary[f"ray{k}_vs_threads_{r['tag']}"] = ratio(t["ours"], t[f"ray_{k}"])
    fits = {k: fit_startup_per_case([(r["n"], statistics.median(r["times"][f"ray_{k}"]))
                                     for r in rows if r["kind"] == "3D"]) for k in args.ray_workers}
    fits = {k: f for k, f in fits.items() if f is not None}
    if not fits:
        return
    for k, (start, per_case) in fits.items():
        print(f"ray, {k} worker(s), 3D: wall = {start:.1f} s start-up (Ray, actors, model loading) + "
              f"{per_case:.2f} s per case (least squares over the sizes {', '.join(str(n) for n in args.sizes)})")
    start, per_case = fits[min(fits)]
    one = per_case * min(fits)  # one worker's seconds per case
    print(f"PROJECTION, not a measurement: N workers, each as fast as one here, the file system not limiting: "
          f"1,000 cases take {start:.0f} s + 1000 x {one:.2f} s / N = "
          + ", ".join(f"N={n}: {(start + 1000 * one / n) / 60:.1f} min" for n in (1, 2, 4, 8, 16)))


if __name__ == "__main__":
    main()
