"""No mirroring at all, in training or at test time (as nnU-Net's nnUNetTrainerNoMirroring):
for image-level targets that depend on orientation, or lateral labels without a declaration."""
from nnunet_mtl.training.trainers.nnUNetTrainerMTL import nnUNetTrainerMTL


class nnUNetTrainerMTLNoMirroring(nnUNetTrainerMTL):
    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, _ = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None
        return rotation, dummy_2d, initial_patch_size, None
