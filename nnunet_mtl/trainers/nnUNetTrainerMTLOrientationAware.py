"""Never mirror across the body's left-right axis when the dataset declares lateral label pairs.

Mirroring left-right swaps a left lung into a right one (real radiographs: left lung Dice 0.68
with nnU-Net's default mirroring, 0.78 without). Other axes keep mirroring; test-time mirroring
excludes the same axis. Without declared pairs this is nnUNetTrainerMTL (and the log says when
label names look lateralised); set ``use_detected_lateral_pairs`` to act on detected names too.
"""
from nnunet_mtl.orientation import decide, mirror_axes_without_lr
from nnunet_mtl.trainers.nnUNetTrainerMTL import nnUNetTrainerMTL


class nnUNetTrainerMTLOrientationAware(nnUNetTrainerMTL):
    use_detected_lateral_pairs = False
    lateral = None  # orientation.LateralDecision, set when the augmentation is configured

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.lateral = decide(self.dataset_json, self.preprocessed_dataset_folder,
                              self.plans_manager.transpose_forward, len(self.configuration_manager.patch_size),
                              self.use_detected_lateral_pairs)
        if self.lateral.active:
            mirror_axes = mirror_axes_without_lr(mirror_axes, self.lateral.lr_axis)
            self.inference_allowed_mirroring_axes = mirror_axes_without_lr(self.inference_allowed_mirroring_axes,
                                                                           self.lateral.lr_axis)
            self.print_to_log_file(f"Orientation: {self.lateral.message}. Not mirroring axis {self.lateral.lr_axis}; "
                                   f"training mirror axes {mirror_axes}, inference mirror axes "
                                   f"{self.inference_allowed_mirroring_axes}")
        else:
            self.print_to_log_file(f"Orientation: {self.lateral.message}; mirror axes unchanged {mirror_axes}")
        return rotation, dummy_2d, initial_patch_size, mirror_axes
