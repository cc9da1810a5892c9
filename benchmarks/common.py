"""Shared set-up for the speed benchmarks (not tests).

Both benchmarks need the same thing: one dataset planned and preprocessed by nnU-Net itself,
and, for inference, a model folder trained for a few iterations (speed does not depend on how
well it is trained). Everything goes under ``--base_dir`` and is reused by the next run with the
same settings, so a GPU session pays for planning once; a marker file records the settings and a
mismatch is an error rather than a silently stale dataset.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import tempfile
from dataclasses import dataclass
from typing import Optional

MARKER = "benchmark_setup.json"


def add_dataset_args(p: argparse.ArgumentParser) -> None:
    """Flags for the synthetic dataset and its plans; defaults are tiny (2-core CPU)."""
    g = p.add_argument_group("dataset / plans")
    g.add_argument("--base_dir", default=None, help="nnU-Net folders live here; reused when the settings match "
                                                    "(default: a new temporary folder)")
    g.add_argument("--dataset_id", type=int, default=941)
    g.add_argument("--cases", type=int, default=8, help="synthetic training cases")
    g.add_argument("--test_cases", type=int, default=4, help="synthetic cases in imagesTs (inference input)")
    g.add_argument("--shape", type=int, nargs=3, default=(24, 40, 40), help="synthetic volume shape z y x")
    g.add_argument("--planner", default="resenc_m", choices=["resenc_m", "resenc_l", "plain"])
    g.add_argument("--configuration", default="3d_fullres")
    g.add_argument("--full_size", action="store_true",
                   help="keep nnU-Net's planned network (no shrinking); for the GPU run")
    g.add_argument("--max_features", type=int, default=32, help="shrink: cap on features per stage")
    g.add_argument("--n_stages", type=int, default=4, help="shrink: encoder stages kept")
    g.add_argument("--patch", type=int, nargs="+", default=None, help="patch size (default: planned)")
    g.add_argument("--batch_size", type=int, default=None,
                   help="batch size (default: 2 when shrunk, planned with --full_size; ResEnc planners pick "
                        "20 on tiny data sets)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--num_processes", type=int, default=2, help="processes for fingerprint/preprocessing")


@dataclass
class BenchDataset:
    id: int
    name: str
    configuration: str
    plans: str
    raw_folder: str
    paths: dict

    def model_folder(self, trainer: str) -> str:
        return os.path.join(self.paths["nnUNet_results"], self.name, f"{trainer}__{self.plans}__{self.configuration}")

    @property
    def test_images(self) -> str:
        return os.path.join(self.raw_folder, "imagesTs")


def set_runtime_env(device: str, compile_: bool = False) -> None:
    """nnU-Net knobs read from the environment: compile off unless asked (timings must not
    include compilation), single-process data loading on small CPUs (fastest there)."""
    os.environ["nnUNet_compile"] = "t" if compile_ else "f"
    if device == "cpu" and (os.cpu_count() or 1) <= 4:
        os.environ.setdefault("nnUNet_n_proc_DA", "0")
    os.environ.setdefault("nnUNet_def_n_proc", str(min(8, os.cpu_count() or 1)))


def _shrink(args) -> Optional[dict]:
    if args.full_size:
        extra = {}
        if args.batch_size is not None:
            extra["batch_size"] = args.batch_size
        if args.patch is not None:
            extra["patch_size"] = tuple(args.patch)
        return extra or None
    shrink = dict(max_features=args.max_features, n_stages=args.n_stages,
                  batch_size=args.batch_size if args.batch_size is not None else 2)
    if args.patch is not None:
        shrink["patch_size"] = tuple(args.patch)
    return shrink


def prepare_dataset(args) -> BenchDataset:
    """Write the synthetic 3D (pancreas-like) dataset, plan and preprocess it, or reuse it."""
    from nnunet_mtl.planning import plan_and_preprocess, plans_identifier, use_base_dir
    from nnunet_mtl.synthetic import write_synthetic_raw
    base = os.path.abspath(args.base_dir or tempfile.mkdtemp(prefix="mtl_bench_"))
    paths = use_base_dir(base)
    settings = {"dataset_id": args.dataset_id, "cases": args.cases, "test_cases": args.test_cases,
                "shape": list(args.shape), "planner": args.planner, "configuration": args.configuration,
                "shrink": _shrink(args), "seed": args.seed}
    marker = os.path.join(base, MARKER)
    stored = stored_setup(marker, settings)
    if stored is not None:
        print(f"[setup] reusing {base} ({stored['name']}, plans {stored['plans']})", flush=True)
        return BenchDataset(args.dataset_id, stored["name"], args.configuration, stored["plans"],
                            stored["raw_folder"], paths)
    raw = write_synthetic_raw(paths["nnUNet_raw"], args.dataset_id, "3d", n=args.cases, n_test=args.test_cases,
                              seed=args.seed, shape=tuple(args.shape))
    print(f"[setup] wrote {args.cases}+{args.test_cases} synthetic cases {tuple(args.shape)} to {raw}", flush=True)
    plans = plan_and_preprocess(args.dataset_id, args.planner, (args.configuration,),
                                num_processes=args.num_processes, shrink=_shrink(args))
    assert plans == plans_identifier(args.planner)
    ds = BenchDataset(args.dataset_id, os.path.basename(raw), args.configuration, plans, raw, paths)
    with open(marker, "w") as f:
        json.dump({"settings": settings, "name": ds.name, "plans": plans, "raw_folder": raw}, f, indent=1)
    return ds


def stored_setup(marker: str, settings: dict):
    """What an earlier run prepared under the same settings (None: nothing yet); other settings stop
    the run, since reusing them would mix two set-ups."""
    settings = json.loads(json.dumps(settings))  # tuples -> lists, for comparison with the stored copy
    if not os.path.isfile(marker):
        return None
    with open(marker) as f:
        stored = json.load(f)
    if stored["settings"] != settings:
        raise SystemExit(f"{os.path.dirname(marker)} was prepared with other settings:\n  {stored['settings']}\n"
                         f"now:\n  {settings}\nuse another --base_dir")
    return stored


def ensure_model(ds: BenchDataset, trainer: str, fold: int, iterations: int, device: str) -> str:
    """A model folder with checkpoint_final.pth, trained ``iterations`` steps (one epoch, no final
    validation): enough for timing inference, which does not depend on the weights' quality."""
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
    from contextlib import nullcontext
    from nnunet_mtl.training.knobs import knob_overrides
    folder = ds.model_folder(trainer)
    if os.path.isfile(os.path.join(folder, f"fold_{fold}", "checkpoint_final.pth")):
        print(f"[setup] reusing trained model {folder}", flush=True)
        return folder
    knobs = dict(num_epochs=1, num_iterations_per_epoch=iterations, num_val_iterations_per_epoch=1)
    ours = trainer.startswith("nnUNetTrainerMTL")
    with knob_overrides(**knobs, warmup_epochs=1, ramp_epochs=1) if ours else nullcontext():
        t = get_trainer_from_args(str(ds.id), ds.configuration, fold, trainer, ds.plans, device=torch.device(device))
        if not ours:
            t.num_epochs, t.num_iterations_per_epoch, t.num_val_iterations_per_epoch = 1, iterations, 1
        maybe_load_checkpoint(t, False, False, None)
        t.run_training()
    print(f"[setup] trained {trainer} for {iterations} iterations -> {folder}", flush=True)
    return folder


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def machine_lines(device: str) -> list:
    """What a reader needs to compare numbers: CPU, cores, torch, device, load, date."""
    import torch
    dev = device
    if device.startswith("cuda") and torch.cuda.is_available():
        dev = f"{device} ({torch.cuda.get_device_name(0)})"
    try:
        from importlib.metadata import version
        nn_v = version("nnunetv2")
    except Exception:
        nn_v = "?"
    return [f"date: {datetime.datetime.now().isoformat(timespec='seconds')}",
            f"host: {platform.node()}  cpu: {cpu_model()}  cores: {os.cpu_count()}",
            f"python {platform.python_version()}  torch {torch.__version__} (threads {torch.get_num_threads()})"
            f"  nnunetv2 {nn_v}  device: {dev}",
            f"load average (1/5/15 min): {load_average()}"]


def describe(ds: BenchDataset) -> str:
    """One line on the plans actually used (patch, batch, features), read from the plans file."""
    from nnunet_mtl.planning import plans_file
    with open(plans_file(ds.id, ds.plans)) as f:
        conf = json.load(f)["configurations"][ds.configuration]
    arch = conf["architecture"]["arch_kwargs"]
    return (f"{ds.name} {ds.plans} {ds.configuration}: patch {conf['patch_size']}, batch {conf['batch_size']}, "
            f"features {arch['features_per_stage']}, {conf['architecture']['network_class_name'].split('.')[-1]}")


# ------------------------------------------------------------------ arms trained in-process (accuracy.py)
def trainer_problem(name: str) -> Optional[str]:
    """None when nnU-Net finds trainer ``name`` (its own tree, then nnUNet_extTrainer), else why not."""
    import contextlib
    import io
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
    from nnunet_mtl.planning import add_trainer_path
    add_trainer_path()
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the lookup prints every folder it searches
            recursive_find_trainer_class_by_name(name)
    except (RuntimeError, AssertionError) as e:
        return f"trainer {name} not found ({str(e).splitlines()[0][:80]})"
    return None


def knobs_problem(knobs: dict) -> Optional[str]:
    """None when every knob is known to this checkout's trainers, else the error message."""
    from nnunet_mtl.training.knobs import encode_overrides
    try:
        encode_overrides(**knobs)
    except ValueError as e:
        return str(e)
    return None


def train_in_process(dataset_id: int, configuration: str, plans: str, trainer: str, fold: int, budget: dict,
                     knobs: dict, device: str) -> float:
    """Train one fold with nnU-Net's own trainer loop (``run_training`` without the final validation);
    returns the seconds it took.

    ``budget`` (num_epochs, num_iterations_per_epoch, num_val_iterations_per_epoch) is set as trainer
    attributes after construction, as nnU-Net's ``nnUNetTrainer_Xepochs`` variants do, so the stock
    trainer and ours get exactly the same number of steps; ``knobs`` (and the budget) also travel in
    the overrides variable, which our trainers read in ``__init__`` (the schedule depends on them)."""
    import time
    import torch
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
    from nnunet_mtl.training.knobs import knob_overrides
    start = time.perf_counter()
    with knob_overrides(**budget, **knobs):
        t = get_trainer_from_args(str(dataset_id), configuration, fold, trainer, plans, device=torch.device(device))
        for name, value in budget.items():
            setattr(t, name, value)
        maybe_load_checkpoint(t, False, False, None)
        t.run_training()
    return time.perf_counter() - start


def main():
    """Prepare a base dir once (dataset, plans, a briefly trained model), so the timed scripts
    that follow spend their minutes on timing only."""
    p = argparse.ArgumentParser(description="Prepare the benchmark dataset and model under --base_dir")
    add_dataset_args(p)
    p.add_argument("--device", default=None)
    p.add_argument("--trainer", default="nnUNetTrainerMTL")
    p.add_argument("--fold", type=int, default=0)
    p.add_argument("--train_iterations", type=int, default=3)
    args = p.parse_args()
    import torch
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    set_runtime_env(device)
    ds = prepare_dataset(args)
    print(describe(ds))
    print(ensure_model(ds, args.trainer, args.fold, args.train_iterations, device))


if __name__ == "__main__":
    main()
