"""Short-budget variants, the way nnU-Net does its own (nnUNetTrainer_Xepochs)."""
import torch

from nnunet_mtl.trainers.nnUNetTrainerMTL import nnUNetTrainerMTL


def _with_epochs(n: int):
    class _Variant(nnUNetTrainerMTL):
        def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                     device: torch.device = torch.device('cuda')):
            super().__init__(plans, configuration, fold, dataset_json, device)
            self.num_epochs = n
            self.warmup_epochs = min(self.warmup_epochs, max(1, n // 5))
            self.ramp_epochs = min(self.ramp_epochs, max(1, n // 4))
    _Variant.__name__ = _Variant.__qualname__ = f"nnUNetTrainerMTL_{n}epochs"
    return _Variant


nnUNetTrainerMTL_1epoch = _with_epochs(1)
nnUNetTrainerMTL_1epoch.__name__ = nnUNetTrainerMTL_1epoch.__qualname__ = "nnUNetTrainerMTL_1epoch"
nnUNetTrainerMTL_5epochs = _with_epochs(5)
nnUNetTrainerMTL_10epochs = _with_epochs(10)
nnUNetTrainerMTL_50epochs = _with_epochs(50)
nnUNetTrainerMTL_100epochs = _with_epochs(100)
nnUNetTrainerMTL_250epochs = _with_epochs(250)
nnUNetTrainerMTL_500epochs = _with_epochs(500)
