"""Run one CLI (stock ``nnUNetv2_predict``, ``nnunet_mtl_predict`` or ``nnunet_mtl_classify``) with timers,
to say what bounded it; not used for the timed runs.

    python benchmarks/profiled_cli.py stock|ours|classify ARGS...

Timers (wall seconds, main process): imports, model loading (``initialize_from_trained_model_folder``),
network forward (every ``_internal_maybe_mirror_and_predict`` call: the network on a tile with its
mirrors; nnU-Net makes no other network call at inference) and everything else (preprocessing, export,
spawning and waiting for worker processes, conversion, writing). One ``[profile] {json}`` line goes to
stderr at exit. The parent adds interpreter start-up and exit: its launch-to-exit wall minus ``total``.
"""
import atexit
import json
import sys
import time

T0 = time.perf_counter()
ENTRIES = {
    "stock": ("nnunetv2.inference.predict_from_raw_data", "predict_entry_point", "nnUNetv2_predict"),
    "ours": ("nnunet_mtl.cli.predict", "main", "nnunet_mtl_predict"),
    "classify": ("nnunet_mtl.cli.classify", "main", "nnunet_mtl_classify"),
}


def _timed(cls, name: str, acc: dict, key: str) -> None:
    """Wrap ``cls.name`` (where defined on cls itself) to add its wall time to ``acc[key]``; nested
    calls (a subclass calling super()) are counted once."""
    if name not in cls.__dict__:
        return
    inner = cls.__dict__[name]

    def wrapper(*a, **k):
        if acc["_depth_" + key]:
            return inner(*a, **k)
        acc["_depth_" + key] += 1
        start = time.perf_counter()
        try:
            return inner(*a, **k)
        finally:
            acc[key] += time.perf_counter() - start
            acc["calls_" + key] += 1
            acc["_depth_" + key] -= 1
    setattr(cls, name, wrapper)


def main() -> None:
    which, args = sys.argv[1], sys.argv[2:]
    module, func, prog = ENTRIES[which]
    import importlib
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    classes = [nnUNetPredictor]
    if which != "stock":
        from nnunet_mtl.predictor import nnUNetPredictorMTL
        classes.append(nnUNetPredictorMTL)
    entry = getattr(importlib.import_module(module), func)
    acc = {k: 0.0 for k in ("network", "load")}
    acc.update({"calls_network": 0, "calls_load": 0, "_depth_network": 0, "_depth_load": 0})
    for cls in classes:
        _timed(cls, "_internal_maybe_mirror_and_predict", acc, "network")
        _timed(cls, "initialize_from_trained_model_folder", acc, "load")
    imported = time.perf_counter() - T0

    def report():
        total = time.perf_counter() - T0
        out = {"cli": which, "total": round(total, 3), "imports": round(imported, 3), "load": round(acc["load"], 3),
               "network": round(acc["network"], 3), "network_calls": acc["calls_network"],
               "other": round(total - imported - acc["load"] - acc["network"], 3)}
        print("[profile] " + json.dumps(out), file=sys.stderr, flush=True)
    atexit.register(report)
    sys.argv = [prog] + args
    rc = entry()
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":  # spawned workers import this file as __mp_main__: they must not run main()
    main()
