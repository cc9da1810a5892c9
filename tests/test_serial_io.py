"""Image files are read and written one at a time per process (SimpleITK crashes on concurrent reads), through the
predictor's plans manager that nnU-Net's own functions use; pickling it for nnU-Net's worker processes still works."""
import pickle
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_mtl.inference.predictor import nnUNetPredictorMTL
from nnunet_mtl.inference.serial_io import SerialIO, serial_reader_writer


class SlowIO(SimpleITKIO):
    """Counts how many of its reads and writes run at once."""
    inside, most = 0, 0
    guard = threading.Lock()

    def _visit(self):
        with SlowIO.guard:
            SlowIO.inside += 1
            SlowIO.most = max(SlowIO.most, SlowIO.inside)
        time.sleep(0.02)
        with SlowIO.guard:
            SlowIO.inside -= 1

    def read_images(self, files):
        self._visit()
        return files, {}

    def read_seg(self, file):
        self._visit()
        return file, {}

    def write_seg(self, seg, file, properties):
        self._visit()


def test_reads_and_writes_from_many_threads_run_one_at_a_time():
    io = serial_reader_writer(SlowIO)()
    calls = [lambda: io.read_images(["a"]), lambda: io.read_seg("b"), lambda: io.write_seg(None, "c", {})] * 6
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda f: f(), calls))
    assert SlowIO.most == 1
    assert results[0] == (["a"], {}) and results[1] == ("b", {})  # the reader's own answers
    SlowIO.most = 0
    with ThreadPoolExecutor(6) as pool:  # the unwrapped class does overlap: the check above can fail
        list(pool.map(lambda _: SlowIO().read_seg("x"), range(12)))
    assert SlowIO.most > 1


def test_the_predictors_plans_manager_hands_out_the_serial_reader_and_still_pickles():
    plans = {"dataset_name": "Dataset001_X", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
             "configurations": {}, "original_median_spacing_after_transp": [1, 1, 1]}
    predictor = nnUNetPredictorMTL(device=torch.device("cpu"), allow_tqdm=False)
    predictor.plans_manager = PlansManager(plans)
    io_class = predictor.plans_manager.image_reader_writer_class
    assert issubclass(io_class, SerialIO) and issubclass(io_class, SimpleITKIO)
    again = pickle.loads(pickle.dumps(predictor.plans_manager))  # nnU-Net's worker processes receive it pickled
    assert issubclass(again.image_reader_writer_class, SerialIO) and again.plans == plans
