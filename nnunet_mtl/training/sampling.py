"""Class-balanced case sampling: the training loader draws cases with probability proportional to
1 / (count of their class), so every class of one classification target is drawn equally often.

An alternative to class weights in the loss (``nnUNetTrainerMTLBalancedSampling`` sets the weights to
1): a balanced batch gives the minority class its share of gradient without inflating its loss.
``ClassBalancedDataLoader`` is nnU-Net's ``nnUNetDataLoader`` with its ``sampling_probabilities`` (used
by ``get_indices`` to draw ``selected_keys``) set from the case table; patch sampling inside a case
(foreground oversampling) is unchanged.
"""
from __future__ import annotations

from collections import Counter
from typing import Dict, Mapping, Optional, Sequence

import numpy as np
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

from nnunet_mtl.targets import CaseTable


def balanced_case_probabilities(case_ids: Sequence[str], table: CaseTable, target: str) -> Dict[str, float]:
    """Per case: labelled cases share their mass equally among the classes present (each case 1 / n_class),
    cases without a label for ``target`` keep their uniform share."""
    labels = {k: table.value(k, target) for k in case_ids}
    counts = Counter(v for v in labels.values() if v is not None)
    n, n_labelled = len(case_ids), sum(counts.values())
    probs = {}
    for k, v in labels.items():
        probs[k] = 1.0 / n if v is None else (n_labelled / n) / (len(counts) * counts[v])
    return probs


def balancing_target(table: CaseTable, name: Optional[str] = None) -> str:
    """The named classification target, or the first one."""
    names = [t.name for t in table.spec.classification_targets]
    if not names:
        raise ValueError("class-balanced sampling needs a classification target; the dataset has none")
    if name is None:
        return names[0]
    if name not in names:
        raise ValueError(f"class-balanced sampling: {name!r} is not a classification target (have {names})")
    return name


class ClassBalancedDataLoader(nnUNetDataLoader):
    def __init__(self, *args, case_probabilities: Mapping[str, float], **kwargs):
        super().__init__(*args, **kwargs)
        p = np.array([case_probabilities[str(k)] for k in self.indices], dtype=np.float64)
        self.sampling_probabilities = p / p.sum()


def build_dataloaders(trainer, case_probabilities: Mapping[str, float]):
    """nnU-Net's ``get_dataloaders`` with the training loader drawing cases by ``case_probabilities``
    (same transforms, datasets, validation loader and augmenter set-up as nnU-Net 2.8)."""
    if trainer.dataset_class is None:
        trainer.dataset_class = infer_dataset_class(trainer.preprocessed_dataset_folder)
    patch_size = trainer.configuration_manager.patch_size
    ds_scales = trainer._get_deep_supervision_scales()
    rotation, dummy_2d, initial_patch_size, mirror_axes = \
        trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    lm = trainer.label_manager
    regions = lm.foreground_regions if lm.has_regions else None
    tr_transforms = trainer.get_training_transforms(
        patch_size, rotation, ds_scales, mirror_axes, dummy_2d,
        use_mask_for_norm=trainer.configuration_manager.use_mask_for_norm, is_cascaded=trainer.is_cascaded,
        foreground_labels=lm.foreground_labels, regions=regions, ignore_label=lm.ignore_label)
    val_transforms = trainer.get_validation_transforms(ds_scales, is_cascaded=trainer.is_cascaded,
                                                       foreground_labels=lm.foreground_labels, regions=regions,
                                                       ignore_label=lm.ignore_label)
    dataset_tr, dataset_val = trainer.get_tr_and_val_datasets()
    common = dict(oversample_foreground_percent=trainer.oversample_foreground_percent, pad_sides=None,
                  probabilistic_oversampling=trainer.probabilistic_oversampling)
    dl_tr = ClassBalancedDataLoader(dataset_tr, trainer.batch_size, initial_patch_size, patch_size, lm,
                                    transforms=tr_transforms, case_probabilities=case_probabilities, **common)
    dl_val = nnUNetDataLoader(dataset_val, trainer.batch_size, patch_size, patch_size, lm,
                              transforms=val_transforms, **common)
    n_proc = get_allowed_n_proc_DA()
    if n_proc == 0:
        gen_tr, gen_val = SingleThreadedAugmenter(dl_tr, None), SingleThreadedAugmenter(dl_val, None)
    else:
        pin = trainer.device.type == 'cuda'
        gen_tr = NonDetMultiThreadedAugmenter(data_loader=dl_tr, transform=None, num_processes=n_proc,
                                              num_cached=max(6, n_proc // 2), seeds=None, pin_memory=pin,
                                              wait_time=0.002)
        gen_val = NonDetMultiThreadedAugmenter(data_loader=dl_val, transform=None, num_processes=max(1, n_proc // 2),
                                               num_cached=max(3, n_proc // 4), seeds=None, pin_memory=pin,
                                               wait_time=0.002)
    next(gen_tr)
    next(gen_val)
    return gen_tr, gen_val
