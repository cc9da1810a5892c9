"""Keep left-right mirroring in training, but swap each declared left/right label pair with the flip.

Built on nnUNetTrainerMTLOrientationAware, which takes the left-right axis out of nnU-Net's own
MirrorTransform; this trainer adds it back as a label-swapping mirror. Test-time mirroring
still excludes that axis: nnU-Net's predictor flips logits back without swapping channels.
Trade-offs (non-lateral anatomy, image-level lateral targets): docs/orientation.md.
"""
from nnunet_mtl.conversion.lateral_pairs import LateralPairError, label_value_pairs, lateral_image_targets
from nnunet_mtl.training.trainers.nnUNetTrainerMTLOrientationAware import nnUNetTrainerMTLOrientationAware
from nnunet_mtl.training.label_swap_mirror import LabelSwapMirrorTransform, insert_before_label_consumers


class nnUNetTrainerMTLLabelSwapMirror(nnUNetTrainerMTLOrientationAware):
    def get_training_transforms(self, *args, **kwargs):
        """Instance method on purpose (nnU-Net calls it as self.get_training_transforms): it needs the
        axis and pairs the orientation decision found; super() gets mirror axes without that axis."""
        pipeline = super().get_training_transforms(*args, **kwargs)
        if self.lateral is not None and self.lateral.active:
            lateral_targets = lateral_image_targets(self.spec)
            if lateral_targets:
                raise LateralPairError(f"dataset.json: image-level target(s) {lateral_targets} are lateral and would "
                                       f"not be swapped with the image; use nnUNetTrainerMTLOrientationAware")
            pairs = label_value_pairs(self.dataset_spec, self.lateral.pairs)
            insert_before_label_consumers(pipeline, LabelSwapMirrorTransform(self.lateral.lr_axis, pairs))
            self.print_to_log_file(f"Orientation: mirroring axis {self.lateral.lr_axis} with label swap {pairs}")
        return pipeline
