"""Ray worker set-up for tests/test_ray_engine.py: a case named in the file $NNUNET_MTL_TEST_FAIL_CASE fails in
the worker (as a bad input or a lost GPU would), so the driver's handling of a failed case is tested on Ray."""
import os


def fail_named_case() -> None:
    from nnunet_mtl.inference.predictor import nnUNetPredictorMTL
    original = nnUNetPredictorMTL.predict_case

    def predict_case(self, data, case_id=None):
        marker = os.environ.get("NNUNET_MTL_TEST_FAIL_CASE", "")
        if marker and os.path.isfile(marker) and open(marker).read().strip() == case_id:
            raise RuntimeError(f"{case_id}: failed in the Ray worker (test hook)")
        return original(self, data, case_id)

    nnUNetPredictorMTL.predict_case = predict_case
