"""nnunet_mtl: multi-task (segmentation + image-level targets) trainers and predictor for nnU-Net v2."""
import os

__version__ = "0.1.0"


def trainer_dir() -> str:
    """The folder to put in ``nnUNet_extTrainer`` so stock nnU-Net finds our trainers."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "training", "trainers")
