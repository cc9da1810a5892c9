"""Ray worker set-up for the Ray tests: faults on purpose (a case that fails, a worker process that dies during a
case or during a fold's training), so what the driver does then is tested on a real local cluster."""
import os


def fail_named_case() -> None:
    """A case named in the file $NNUNET_MTL_TEST_FAIL_CASE fails in the worker; ``kill CASE`` instead kills the
    worker process once (as a lost node or the OOM killer would; the file is removed first, so the retry lives)."""
    from nnunet_mtl.inference.predictor import nnUNetPredictorMTL
    original = nnUNetPredictorMTL.predict_case

    def predict_case(self, data, case_id=None):
        marker = os.environ.get("NNUNET_MTL_TEST_FAIL_CASE", "")
        named = open(marker).read().split() if marker and os.path.isfile(marker) else []
        if named == ["kill", case_id]:
            os.remove(marker)
            os._exit(1)
        if named == [case_id]:
            raise RuntimeError(f"{case_id}: failed in the Ray worker (test hook)")
        return original(self, data, case_id)

    nnUNetPredictorMTL.predict_case = predict_case


def kill_named_fold_once() -> None:
    """The worker training the fold named in $NNUNET_MTL_TEST_KILL_FOLD's file dies (as a lost node would) when
    that fold's second epoch starts, after the first one's checkpoint is written; the file is removed first, so
    Ray's retry lives. (nnU-Net imports our trainers by file path: the hook patches its own base class.)"""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    original = nnUNetTrainer.on_train_epoch_start

    def on_train_epoch_start(self):
        marker = os.environ.get("NNUNET_MTL_TEST_KILL_FOLD", "")
        if (self.current_epoch == 1 and marker and os.path.isfile(marker)
                and open(marker).read().strip() == str(self.fold)):
            os.remove(marker)
            os._exit(1)
        original(self)

    nnUNetTrainer.on_train_epoch_start = on_train_epoch_start
