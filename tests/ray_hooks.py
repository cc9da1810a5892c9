"""Ray worker set-up for the Ray tests: faults on purpose (a case that fails, a worker process that dies during a
case or during a fold's training), so what the driver does then is tested on a real local cluster.

Each hook patches its class when the worker imports that class's module (``after_import``), not at start-up:
Ray's own helper actors and idle workers then never import torch and nnU-Net."""
import importlib.abc
import os
import sys


def after_import(module_name: str, patch) -> None:
    """``patch(module)`` as soon as ``module_name`` is imported in this process (at once if it already is)."""
    if module_name in sys.modules:
        patch(sys.modules[module_name])
        return

    class PatchOnImport(importlib.abc.MetaPathFinder):
        def find_spec(self, fullname, path, target=None):
            if fullname != module_name:
                return None
            for finder in sys.meta_path:
                spec = None if finder is self else getattr(finder, "find_spec", lambda *a: None)(fullname, path,
                                                                                                  target)
                if spec is not None and spec.loader is not None:
                    break
            else:
                return None
            sys.meta_path.remove(self)
            exec_module = spec.loader.exec_module

            def exec_and_patch(module):
                exec_module(module)
                patch(module)
            spec.loader.exec_module = exec_and_patch
            return spec

    sys.meta_path.insert(0, PatchOnImport())


def fail_named_case() -> None:
    """A case named in the file $NNUNET_MTL_TEST_FAIL_CASE fails in the worker; ``kill CASE`` instead kills the
    worker process once (as a lost node or the OOM killer would; the file is removed first, so the retry lives)."""
    def patch(module):
        original = module.nnUNetPredictorMTL.predict_case

        def predict_case(self, data, case_id=None):
            marker = os.environ.get("NNUNET_MTL_TEST_FAIL_CASE", "")
            named = open(marker).read().split() if marker and os.path.isfile(marker) else []
            if named == ["kill", case_id]:
                os.remove(marker)
                os._exit(1)
            if named == [case_id]:
                raise RuntimeError(f"{case_id}: failed in the Ray worker (test hook)")
            return original(self, data, case_id)

        module.nnUNetPredictorMTL.predict_case = predict_case
    after_import("nnunet_mtl.inference.predictor", patch)


def kill_named_fold_once() -> None:
    """The worker training the fold named in $NNUNET_MTL_TEST_KILL_FOLD's file dies (as a lost node would) when
    that fold's second epoch starts, after the first one's checkpoint is written; the file is removed first, so
    Ray's retry lives. (nnU-Net imports our trainers by file path: the hook patches its own base class.)"""
    def patch(module):
        original = module.nnUNetTrainer.on_train_epoch_start

        def on_train_epoch_start(self):
            marker = os.environ.get("NNUNET_MTL_TEST_KILL_FOLD", "")
            if (self.current_epoch == 1 and marker and os.path.isfile(marker)
                    and open(marker).read().strip() == str(self.fold)):
                os.remove(marker)
                os._exit(1)
            original(self)

        module.nnUNetTrainer.on_train_epoch_start = on_train_epoch_start
    after_import("nnunetv2.training.nnUNetTrainer.nnUNetTrainer", patch)


class ActorWithoutTheModel:
    """A Ray Data actor whose node cannot see the model folder: it fails in its constructor, as
    ``ray_engine.load_on_worker`` does there (without importing torch)."""

    def __init__(self, path: str):
        raise FileNotFoundError(f"{path}: checkpoint not found on Ray worker node test; the model folder must be "
                                f"on storage every node sees at the same path")

    def __call__(self, batch):
        return batch
