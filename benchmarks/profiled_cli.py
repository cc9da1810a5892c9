"""Run one CLI (stock ``nnUNetv2_predict``, ``nnunet_mtl_predict`` or ``nnunet_mtl_classify``) with timers,
to say what bounded it; not used for the timed runs.

    python benchmarks/profiled_cli.py stock|ours|classify ARGS...

Timers (wall seconds, main process): imports, model loading (``initialize_from_trained_model_folder``),
network forward (forward hooks on the loaded network and its encoder, outermost call only: every pass,
mirrored or batched or encoder-only, whoever makes it) and everything else (preprocessing, mirroring and
Gaussian accumulation, export, spawning and waiting for worker processes, conversion, writing). One
``[profile] {json}`` line goes to stderr at exit. The parent adds interpreter start-up and exit: its
launch-to-exit wall minus ``total``.
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


def _timed(cls, name: str, acc: dict, after=None) -> None:
    """Wrap ``cls.name`` (where defined on cls itself) to add its wall time to ``acc[name]``; nested calls
    (a subclass calling super()) count once; ``after(self)`` runs when the outermost call returns."""
    if name not in cls.__dict__:
        return
    inner = cls.__dict__[name]

    def wrapper(self, *a, **k):
        if acc["_depth_" + name]:
            return inner(self, *a, **k)
        acc["_depth_" + name] += 1
        start = time.perf_counter()
        try:
            return inner(self, *a, **k)
        finally:
            acc[name] += time.perf_counter() - start
            acc["_depth_" + name] -= 1
            if after is not None:
                after(self)
    setattr(cls, name, wrapper)


def _hook_network(acc: dict):
    """``after`` for model loading: time every outermost forward of the network or its encoder."""
    def attach(predictor):
        state = {"depth": 0, "start": 0.0}

        def pre(module, args):
            if acc.get("_depth__compile"):  # the OpenVINO conversion traces the network: loading, not inference
                return
            if state["depth"] == 0:
                state["start"] = time.perf_counter()
            state["depth"] += 1

        def post(module, args, output):
            if acc.get("_depth__compile"):
                return
            state["depth"] -= 1
            if state["depth"] == 0:
                acc["network"] += time.perf_counter() - state["start"]
                acc["network_calls"] += 1
        modules = [predictor.network] + ([predictor.network.encoder] if hasattr(predictor.network, "encoder") else [])
        for m in modules:
            m.register_forward_pre_hook(pre)
            m.register_forward_hook(post)
    return attach


def main() -> None:
    which, args = sys.argv[1], sys.argv[2:]
    module, func, prog = ENTRIES[which]
    import importlib
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    classes = [nnUNetPredictor]
    if which != "stock":
        from nnunet_mtl.inference.predictor import nnUNetPredictorMTL
        classes.append(nnUNetPredictorMTL)
    entry = getattr(importlib.import_module(module), func)
    acc = {"network": 0.0, "network_calls": 0, "initialize_from_trained_model_folder": 0.0,
           "_depth_initialize_from_trained_model_folder": 0}
    for cls in classes:
        _timed(cls, "initialize_from_trained_model_folder", acc, after=_hook_network(acc))
    if which != "stock":  # the OpenVINO backend bypasses the torch modules' hooks: time its runs instead
        from nnunet_mtl.inference.openvino_backend import OpenVINONetwork
        acc.update(_run=0.0, _depth__run=0, _compile=0.0, _depth__compile=0)
        _timed(OpenVINONetwork, "_compile", acc)
        _timed(OpenVINONetwork, "_run", acc, after=lambda self: acc.__setitem__("network_calls",
                                                                                 acc["network_calls"] + 1))
        # the torch hooks count a forward that falls back to torch; _run counts the compiled ones
    imported = time.perf_counter() - T0

    def report():
        total = time.perf_counter() - T0
        compiled = acc.get("_compile", 0.0)  # OpenVINO conversion / cache read + compile, lazily on a first forward
        load = acc["initialize_from_trained_model_folder"] + compiled
        acc["network"] += acc.get("_run", 0.0) - compiled
        out = {"cli": which, "total": round(total, 3), "imports": round(imported, 3), "load": round(load, 3),
               "network": round(acc["network"], 3), "network_calls": acc["network_calls"],
               "other": round(total - imported - load - acc["network"], 3)}
        print("[profile] " + json.dumps(out), file=sys.stderr, flush=True)
    atexit.register(report)
    sys.argv = [prog] + args
    rc = entry()  # as the console scripts leave: sys.exit with the status (the atexit report runs first)
    sys.exit(rc if isinstance(rc, int) else 0)


if __name__ == "__main__":  # spawned workers import this file as __mp_main__: they must not run main()
    main()
