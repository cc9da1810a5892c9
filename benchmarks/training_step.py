"""Benchmark (not a test): training step time of nnUNetTrainerMTL over stock nnUNetTrainer.

Both trainers are built by nnU-Net's own ``get_trainer_from_args`` on the same preprocessed
dataset and plans, and ``on_train_start`` is called on each. Batches are fetched once from the
stock trainer's dataloader and fed to both ``train_step``s, so the ratio measures the step
itself (forward with heads, two losses, backward, optimiser), not data loading. Steps run in
interleaved blocks (stock, ours, ours, stock, ...) after warm-up steps that are not counted; on
CUDA each step is bracketed by ``torch.cuda.synchronize``. A second measurement includes each
trainer's own dataloader (``next()`` + ``train_step``), as in real training.

Tiny CPU run (default settings):
    python benchmarks/training_step.py --base_dir /tmp/mtl_bench --device cpu
GPU run (full-size ResEnc M): see docs/benchmarks.md.
"""
import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from common import add_dataset_args, describe, load_average, machine_lines, prepare_dataset, set_runtime_env  # noqa: E402


def build_trainer(ds, name: str, fold: int, device):
    """A trainer exactly as nnUNetv2_train builds it, ready for train_step."""
    from nnunetv2.run.run_training import get_trainer_from_args
    t = get_trainer_from_args(str(ds.id), ds.configuration, fold, name, ds.plans, device=device)
    t.on_train_start()
    return t


def timed_steps(trainer, batches, n: int, start: int, sync, with_loader: bool) -> list:
    """Seconds per step for n steps; batches are cycled from ``start`` unless the loader is used."""
    out = []
    for i in range(n):
        sync()
        t0 = time.perf_counter()
        batch = next(trainer.dataloader_train) if with_loader else batches[(start + i) % len(batches)]
        trainer.train_step(batch)
        sync()
        out.append(time.perf_counter() - t0)
    return out


def measure(trainers: dict, batches, blocks: int, steps: int, warmup: int, sync, with_loader: bool) -> dict:
    """Warm-up, then blocks in alternating order (A B, B A, ...): drifts in machine load hit both."""
    names = list(trainers)
    for n in names:
        timed_steps(trainers[n], batches, warmup, 0, sync, with_loader)
    times = {n: [] for n in names}
    for b in range(blocks):
        for n in (names if b % 2 == 0 else names[::-1]):
            times[n].append(timed_steps(trainers[n], batches, steps, b * steps, sync, with_loader))
    return times


def paired_ratio(t: dict) -> float:
    """Median over blocks of ours/stock block medians: adjacent blocks share the machine's load."""
    return statistics.median(statistics.median(o) / statistics.median(s) for s, o in zip(t["stock"], t["ours"]))


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataset_args(p)
    g = p.add_argument_group("timing")
    g.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    g.add_argument("--fold", type=int, default=0)
    g.add_argument("--stock", default="nnUNetTrainer")
    g.add_argument("--ours", default="nnUNetTrainerMTL")
    g.add_argument("--warmup", type=int, default=2, help="uncounted steps per trainer (per measurement)")
    g.add_argument("--steps", type=int, default=5, help="steps per block")
    g.add_argument("--blocks", type=int, default=6, help="interleaved blocks per trainer")
    g.add_argument("--batches", type=int, default=4, help="distinct pre-fetched batches (cycled)")
    g.add_argument("--loader_blocks", type=int, default=4,
                   help="blocks for the with-dataloader measurement (0: skip it)")
    g.add_argument("--compile", action="store_true", help="let nnU-Net torch.compile the networks")
    g.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = p.parse_args()

    import torch
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    set_runtime_env(device.type, args.compile)
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # what nnU-Net's run_training sets
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    ds = prepare_dataset(args)

    torch.manual_seed(args.seed)
    trainers = {"stock": build_trainer(ds, args.stock, args.fold, device),
                "ours": build_trainer(ds, args.ours, args.fold, device)}
    batches = [next(trainers["stock"].dataloader_train) for _ in range(args.batches)]
    print(f"[bench] batch keys {sorted(batches[0])}; data {tuple(batches[0]['data'].shape)}", flush=True)

    load_before = load_average()
    steps = measure(trainers, batches, args.blocks, args.steps, args.warmup, sync, with_loader=False)
    load_mid = load_average()
    loader = measure(trainers, batches, args.loader_blocks, args.steps, args.warmup, sync, with_loader=True) \
        if args.loader_blocks > 0 else None
    load_after = load_average()

    print("\n=== training_step: ms per train_step, same plans and same batches ===")
    for line in machine_lines(device.type):
        print(line)
    print(f"load average before / after steps / after loader run: {load_before} | {load_mid} | {load_after}")
    print(f"plans: {describe(ds)}")
    print(f"stock {args.stock} ({type(trainers['stock'].optimizer).__name__}), ours {args.ours} "
          f"({type(trainers['ours'].optimizer).__name__}); compile {'on' if args.compile else 'off'}; "
          f"warm-up {args.warmup}, {args.blocks} blocks x {args.steps} steps each, interleaved\n")
    header = ("| measurement | stock ms/step (median) | ours ms/step (median) | ours/stock (medians) | "
              "ours/stock (means) | ours/stock (paired blocks) |")
    print(header)
    print("|" + "|".join("-" * len(c) for c in header.split("|")[1:-1]) + "|")
    rows = [("train_step only", steps)] + ([("next() + train_step", loader)] if loader else [])
    for label, t in rows:
        flat = {n: [s for block in v for s in block] for n, v in t.items()}
        ms = {n: 1000 * statistics.median(v) for n, v in flat.items()}
        mean = {n: 1000 * statistics.fmean(v) for n, v in flat.items()}
        print(f"| {label} | {ms['stock']:.1f} | {ms['ours']:.1f} | {ms['ours'] / ms['stock']:.3f} | "
              f"{mean['ours'] / mean['stock']:.3f} | {paired_ratio(t):.3f} |")
    for label, t in rows:
        for n, v in t.items():
            print(f"{label} {n} (ms, per block): " + " | ".join(" ".join(f"{1000 * s:.0f}" for s in b) for b in v))


if __name__ == "__main__":
    main()
