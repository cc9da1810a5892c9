"""Short-budget variants, the way nnU-Net does its own (nnUNetTrainer_Xepochs)."""
from nnunet_mtl.training.trainers.nnUNetTrainerMTL import nnUNetTrainerMTL


class nnUNetTrainerMTL_1epoch(nnUNetTrainerMTL):
    budget_epochs = 1


class nnUNetTrainerMTL_5epochs(nnUNetTrainerMTL):
    budget_epochs = 5


class nnUNetTrainerMTL_10epochs(nnUNetTrainerMTL):
    budget_epochs = 10


class nnUNetTrainerMTL_50epochs(nnUNetTrainerMTL):
    budget_epochs = 50


class nnUNetTrainerMTL_100epochs(nnUNetTrainerMTL):
    budget_epochs = 100


class nnUNetTrainerMTL_250epochs(nnUNetTrainerMTL):
    budget_epochs = 250


class nnUNetTrainerMTL_500epochs(nnUNetTrainerMTL):
    budget_epochs = 500
