"""nnunet_mtl_trainer_path: print the folder to put in nnUNet_extTrainer.

    export nnUNet_extTrainer=$(nnunet_mtl_trainer_path)
"""
from nnunet_mtl import trainer_dir


def main(argv=None) -> int:
    print(trainer_dir())
    return 0
