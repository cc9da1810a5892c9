"""nnUNetTrainerMTL: nnU-Net's trainer plus image-level heads on the encoder.

Found by stock nnU-Net through ``nnUNet_extTrainer`` (this folder), so this file imports
absolutely and keeps the logic in the library. What it changes, hook by hook:

* ``do_split``: a fold beyond an existing ``splits_final.json`` is an error (nnU-Net would train a
  random 80:20 split).
* ``build_network_architecture``: nnU-Net's own U-Net from the plans, wrapped in MTLNetwork
  (heads read the same encoder pass the decoder uses; one encoder forward per step).
* ``train_step``: seg loss and head loss from one forward. By default (``heads_train_encoder`` unset, a
  dataset with masks) the heads read the encoder's features detached: the U-Net's loss, gradients,
  clipping and random draws are stock nnU-Net's (same seed, same U-Net weights, tested) and the phase
  schedule scales the heads' loss; with ``heads_train_encoder=true`` the heads' gradient trains the
  encoder too and the schedule mixes the two losses. (With AMP on a GPU one GradScaler serves both: a
  step where the heads' gradients overflow is skipped for the U-Net too, as a stock step with an
  overflow is.)
* ``validation_step`` / ``on_validation_epoch_end``: head loss, accuracy and macro-F1 on the
  validation patches (for checkpoint selection only; reported numbers are whole-case).
* ``configure_optimizers``: nnU-Net's SGD (default) or AdamW (seed design), heads in their own parameter
  group with their own learning rate.
* ``on_epoch_end``: best checkpoint by a combined score, early stopping with a patience.
* ``on_train_end``: after early stopping checkpoint_final gets the selected (best combined score)
  weights; the fold is marked finished, so continuing it (``--c``) trains nothing.
* ``save_checkpoint``: atomic writes; checkpoint_latest also every ``checkpoint_minutes``.
* ``perform_actual_validation``: nnU-Net's whole-case validation run by our engine
  (``training.final_validation``): masks and head outputs from one sliding window per case (CSV, accuracy /
  macro-F1, temperatures).

Knobs (defaults, ``NNUNET_MTL_OVERRIDES``, pipeline flags) are declared once in ``nnunet_mtl/training/knobs.py``;
warm-up, ramp and patience scale with the epoch budget unless set.

Combined score (checkpoint_best, early stopping) =
``selection_seg_weight * ema_pseudo_dice + (1 - selection_seg_weight) * ema_head_score``, where the
head score is the mean over targets of macro-F1 (classification) or 1 / (1 + MAE / std)
(regression); without masks it is the head score alone.
"""
import os
import sys

import numpy as np
import torch
from torch import autocast

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context

from nnunet_mtl.training.case_targets import CaseTargets
from nnunet_mtl.training.finetune import load_stock_weights, resolve_checkpoint, set_heads_only
from nnunet_mtl.training.knobs import apply_knobs, resolve_lrs, resolve_schedule
from nnunet_mtl.training.losses import HeadLoss, HeadWeightSchedule
from nnunet_mtl.model.network import MTLNetwork, unwrap
from nnunet_mtl.training.orientation import decide, limit_rotation_for_lateral, mirror_axes_without_lr
from nnunet_mtl.dataset_spec import DatasetSpec, targets_from_plans, targets_to_plans
from nnunet_mtl.training import selection
from nnunet_mtl.training.checkpointing import LatestCheckpointClock, save_atomically
from nnunet_mtl.training.head_metrics import patch_head_metrics, patch_predictions
from nnunet_mtl.training.optim import build_optimizer
from nnunet_mtl.training.split_check import check_fold_in_splits
from nnunet_mtl.training.step_helpers import (class_weights_for_split, clip_per_group, gathered_mean,
                                              per_target_losses, PrivateRandomStream, store_regression_stats,
                                              to_device, zero_with_graph)
from nnunet_mtl.training.final_validation import validate

SEG_ACTIVATION_KEY = "mtl_seg_activation"  # plans key: how heads turn seg logits into foreground


class nnUNetTrainerMTL(nnUNetTrainer):
    head_stages = (-1,)
    head_dropout = 0.2
    head_pools = ("global",)            # what the heads pool at their stages (nnunet_mtl.model.pooling.POOLS)
    use_class_weights = True            # False: every class weight 1 (e.g. when sampling balances the classes)
    use_detected_lateral_pairs = False  # declared lateral pairs always count; detected names only if True
    lateral = None                      # orientation.LateralDecision, set with the augmentation
    budget_epochs = None                # short-budget variants set this; the schedule scales with it

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cuda')):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.dataset_spec = DatasetSpec.from_dataset_json(dataset_json)
        self.case_table = self.dataset_spec.table
        self.spec = self.dataset_spec.targets
        targets_to_plans(self.plans_manager.plans, self.spec)  # travels to plans.json -> predictor
        self.plans_manager.plans[SEG_ACTIVATION_KEY] = "sigmoid" if self.label_manager.has_regions else "softmax"
        self.has_masks = self.dataset_spec.has_masks
        if self.budget_epochs:
            self.num_epochs = self.budget_epochs
        try:  # defaults from nnunet_mtl/training/knobs.py, then NNUNET_MTL_OVERRIDES (which always win)
            apply_knobs(self)
        except ValueError as e:  # a value the user set in the environment: one line, not nnU-Net's traceback
            print(f"{type(self).__name__}: {e}", file=sys.stderr)
            raise SystemExit(2) from None
        if not self.has_masks and self.heads_train_encoder is False:
            raise ValueError("heads_train_encoder=false on a dataset without masks: nothing would train the encoder "
                             "(leave it unset or true)")
        self.case_targets = CaseTargets(self.case_table)
        self.head_loss = None
        self.regression_stats = {}
        self.mtl_state = selection.new_state()
        self._best_weights = None  # CPU copy of the best epoch's weights (for checkpoint_final)

    # ------------------------------------------------------------------ network / optimiser
    @classmethod
    def build_network_architecture(cls, plans_manager, configuration_manager, num_input_channels: int,
                                   num_output_channels: int, enable_deep_supervision: bool = True):
        unet = nnUNetTrainer.build_network_architecture(plans_manager, configuration_manager, num_input_channels,
                                                        num_output_channels, enable_deep_supervision)
        return MTLNetwork(unet, targets_from_plans(plans_manager.plans), cls.head_stages, cls.head_dropout,
                          cls.head_pools, plans_manager.plans.get(SEG_ACTIVATION_KEY, "softmax"))

    def configure_optimizers(self):
        lr, head_lr = resolve_lrs(self.optimizer_name, self.initial_lr, self.head_lr)
        self.print_to_log_file(f"Optimizer: {self.optimizer_name}, lr {lr:g} (U-Net), {head_lr:g} (heads), "
                               f"weight decay {self.weight_decay:g}, poly decay over {self.num_epochs} epochs")
        return build_optimizer(unwrap(self.network), self.optimizer_name, lr, head_lr, self.weight_decay,
                               self.num_epochs)

    @property
    def schedule_lengths(self) -> dict:
        """Warm-up, ramp and patience in epochs: the knobs where set, else scaled to num_epochs. An unset patience
        is None (no early stop) when the heads do not train the encoder: the U-Net then trains its whole budget,
        as stock nnU-Net's does."""
        lengths = resolve_schedule(self.num_epochs, self.warmup_epochs, self.ramp_epochs, self.early_stopping_patience)
        if self.early_stopping_patience is None and not self.encoder_trained_by_heads:
            lengths["early_stopping_patience"] = None
        return lengths

    @property
    def schedule(self) -> HeadWeightSchedule:
        lengths = self.schedule_lengths
        return HeadWeightSchedule(lengths["warmup_epochs"], lengths["ramp_epochs"], self.head_weight_start,
                                  self.head_weight_end)

    @property
    def encoder_trained_by_heads(self) -> bool:
        """``heads_train_encoder``, derived where unset: only without masks (nothing else trains the encoder)."""
        return not self.has_masks if self.heads_train_encoder is None else bool(self.heads_train_encoder)

    def loss_weights(self):
        """(seg weight, head weight) in force this epoch; heads only when the dataset has no masks. When the heads
        do not train the encoder the segmentation keeps its full weight (stock nnU-Net's loss and gradients) and
        the schedule scales the heads' loss alone."""
        if not self.has_masks:
            return 0.0, 1.0
        w_seg, w_head = self.schedule.weights(self.current_epoch)
        return (w_seg, w_head) if self.encoder_trained_by_heads else (1.0, w_head)

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        """nnU-Net's augmentation, minus mirroring across the body's left-right axis when the dataset
        declares lateralised label pairs (a mirror would turn a left lung into a right one)."""
        rotation, dummy_2d, initial_patch_size, mirror_axes = \
            super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.lateral = decide(self.dataset_spec, self.preprocessed_dataset_folder,
                              self.plans_manager.transpose_forward, len(self.configuration_manager.patch_size),
                              self.use_detected_lateral_pairs)
        if self.lateral.active:
            rotation = limit_rotation_for_lateral(rotation)
            mirror_axes = mirror_axes_without_lr(mirror_axes, self.lateral.lr_axis)
            self.inference_allowed_mirroring_axes = mirror_axes_without_lr(self.inference_allowed_mirroring_axes,
                                                                           self.lateral.lr_axis)
            self.print_to_log_file(f"Orientation: {self.lateral.message}. Not mirroring axis {self.lateral.lr_axis}; "
                                   f"training mirror axes {mirror_axes}, inference mirror axes "
                                   f"{self.inference_allowed_mirroring_axes}")
        else:
            self.print_to_log_file(f"Orientation: {self.lateral.message}; mirror axes unchanged {mirror_axes}")
        return rotation, dummy_2d, initial_patch_size, mirror_axes

    # ------------------------------------------------------------------ training
    def do_split(self):
        """nnU-Net's split; a fold beyond an existing splits_final.json is refused (``split_check``)."""
        check_fold_in_splits(self.fold, os.path.join(self.preprocessed_dataset_folder_base, "splits_final.json"))
        return super().do_split()

    def on_train_start(self):
        super().on_train_start()
        self.latest_clock = LatestCheckpointClock(self.checkpoint_minutes)
        tr_keys, _ = self.do_split()
        class_weights = class_weights_for_split(self.case_table, tr_keys, self.class_weight_smoothing,
                                                self.class_weight_power)
        if not self.use_class_weights:
            class_weights = {name: np.ones_like(w) for name, w in class_weights.items()}
        for name, w in class_weights.items():
            counts = self.case_table.class_counts(name, tr_keys)
            self.print_to_log_file(f"Head '{name}': training-split counts {dict(zip(self.spec[name].classes, counts))}"
                                   f" -> class weights {np.round(w, 4).tolist()}")
        self.regression_stats = self.case_targets.regression_stats(tr_keys)
        store_regression_stats(unwrap(self.network), self.regression_stats)
        self.head_loss = HeadLoss(self.spec, class_weights).to(self.device)
        unwrap(self.network).detach_head_inputs = not self.encoder_trained_by_heads
        # reading the initial seed draws nothing; one stream per DDP rank
        self.heads_random = PrivateRandomStream(self.device, torch.initial_seed() + 1 + self.local_rank)
        self.print_to_log_file("Heads train the encoder too (joint gradient; segmentation loss weighted by the "
                               "schedule)" if self.encoder_trained_by_heads else
                               "Heads learn on the encoder's features without training it: the U-Net gets stock "
                               "nnU-Net's loss and gradients (heads_train_encoder=true for the joint gradient)")
        self._maybe_init_from_stock()
        w_seg, w_head = self.loss_weights()
        self.print_to_log_file(f"Schedule for {self.num_epochs} epochs: {self.schedule_lengths} (unset ones scale with "
                               f"the budget); loss weights now: seg {w_seg:.3f}, heads {w_head:.3f} ({self.schedule})")

    def _maybe_init_from_stock(self):
        """``init_from``: stock encoder/decoder weights before the first epoch (never when continuing)."""
        if not self.init_from or self.current_epoch > 0 or getattr(self, "_continued", False):
            if self.init_from:
                self.print_to_log_file(f"init_from ignored: continuing a run from epoch {self.current_epoch}")
            return
        report = load_stock_weights(unwrap(self.network), resolve_checkpoint(self.init_from, self.fold))
        for line in report.lines():
            self.print_to_log_file(line, also_print_to_console=True)

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        heads_only = self.current_epoch < self.heads_only_epochs
        if set_heads_only(unwrap(self.network), heads_only, self.optimizer, self.is_ddp):
            self.print_to_log_file(f"Heads only until epoch {self.heads_only_epochs}: encoder/decoder frozen" if heads_only
                                   else "Heads-only phase over: training the whole network")

    def train_step(self, batch: dict) -> dict:
        data = batch['data'].to(self.device, non_blocking=True)
        target = to_device(batch['target'], self.device)
        head_targets = self.case_targets.for_keys(batch['keys'])
        w_seg, w_head = self.loss_weights()
        self.optimizer.zero_grad(set_to_none=True)
        with autocast(self.device.type, enabled=True) if self.device.type == 'cuda' else dummy_context():
            with self.heads_random():  # the heads' dropout leaves nnU-Net's random draws as stock's
                seg_out, head_out = self.network(data, with_heads=True)
            seg_loss = self.loss(seg_out, target) if w_seg > 0 else zero_with_graph(seg_out)
            head_loss, parts = self.head_loss(head_out, head_targets, self.regression_stats)
            loss = w_seg * seg_loss + w_head * head_loss
        self._backward_and_step(loss)
        # nnU-Net's own 'loss' curve (progress.png) shows the segmentation loss, as a stock run's does; the
        # heads' losses are in mtl_progress
        logged = seg_loss if self.has_masks else head_loss
        out = {'loss': logged.detach().cpu().numpy(), 'seg_loss': seg_loss.detach().cpu().numpy(),
               'head_loss': head_loss.detach().cpu().numpy()}
        out.update(per_target_losses(self.spec, parts))
        return out

    def _backward_and_step(self, loss):
        if self.grad_scaler is not None:
            self.grad_scaler.scale(loss).backward()
            self.grad_scaler.unscale_(self.optimizer)
            clip_per_group(self.optimizer, 12)
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        else:
            loss.backward()
            clip_per_group(self.optimizer, 12)
            self.optimizer.step()

    def on_train_epoch_end(self, train_outputs):
        super().on_train_epoch_end(train_outputs)
        self._epoch_record = {"epoch": self.current_epoch}
        keys = ["seg_loss", "head_loss"] + [f"loss_{t.name}" for t in self.spec]
        for key in keys:
            self._epoch_record[f"train_{key}"] = gathered_mean([o[key] for o in train_outputs], self.is_ddp)
        self._epoch_record["seg_weight"], self._epoch_record["head_weight"] = self.loss_weights()

    # ------------------------------------------------------------------ validation (patches)
    def validation_step(self, batch: dict) -> dict:
        net = unwrap(self.network)
        net.capture_heads = True
        try:
            out = super().validation_step(batch)
        finally:
            net.capture_heads = False
        raw, net.last_head_outputs = net.last_head_outputs, None
        head_targets = self.case_targets.for_keys(batch['keys'])
        head_loss, _ = self.head_loss(raw, head_targets, self.regression_stats)
        out['head_loss'] = head_loss.detach().cpu().numpy()
        out.update(patch_predictions(net, raw, head_targets))
        return out

    def on_validation_epoch_end(self, val_outputs):
        super().on_validation_epoch_end(val_outputs)
        record = self._epoch_record
        record["val_head_loss"] = gathered_mean([o['head_loss'] for o in val_outputs], self.is_ddp)
        record.update(patch_head_metrics(self.spec, val_outputs, self.is_ddp, self.regression_stats))
        record["pseudo_dice_ema"] = float(self.logger.get_value('ema_fg_dice', step=-1))

    # ------------------------------------------------------------------ epoch end: selection, stopping
    def on_epoch_end(self):
        record = self._epoch_record
        score = selection.update_selection(self.mtl_state, record, self.selection_seg_weight, self.has_masks)
        msg = ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in record.items())
        self.print_to_log_file(f"MTL: {msg}")
        self._best_ema = float('inf')  # stock selection is by pseudo Dice only; ours is the combined score
        if self.mtl_state["epochs_since_best"] == 0:
            self.print_to_log_file(f"New best combined score: {score:.4f}")
            self._best_weights = {k: v.detach().to('cpu', copy=True)
                                  for k, v in unwrap(self.network).state_dict().items()}
            self.save_checkpoint(os.path.join(self.output_folder, 'checkpoint_best.pth'))
        due = self.latest_clock.due()
        nnunet_save_every = self.save_every
        if due:
            self.save_every = 1  # nnU-Net's own periodic save writes checkpoint_latest this epoch
        try:
            super().on_epoch_end()
        finally:
            self.save_every = nnunet_save_every
        if due:
            self.latest_clock.saved()
        if self.local_rank == 0:
            selection.write_progress(self.output_folder, self.mtl_state)
        patience = self.schedule_lengths["early_stopping_patience"]
        if patience is not None and self.mtl_state["epochs_since_best"] >= patience \
                and self.current_epoch < self.num_epochs:
            self.mtl_state["stopped_early"] = True
            raise selection.EarlyStopping(f"Early stopping after epoch {self.current_epoch - 1}: no better combined "
                                          f"score for {patience} epochs (best {self.mtl_state['best_score']:.4f} at "
                                          f"epoch {self.mtl_state['best_epoch']})")

    def run_training(self):
        if self.mtl_state.get("finished"):  # continuing a finished fold (--c): nothing left to train
            how = "stopped early" if self.mtl_state.get("stopped_early") else "budget reached"
            self.print_to_log_file(f"This fold is finished ({how}, final weights from epoch "
                                   f"{self.mtl_state.get('final_weights_epoch')}); nothing to train. Start a new "
                                   f"training (without --c) to train again.", also_print_to_console=True)
            self.on_train_start()
            self.on_train_end()
            return
        try:
            super().run_training()
        except selection.EarlyStopping as stop:
            self.print_to_log_file(str(stop))
            self.on_train_end()

    def on_train_end(self):
        """checkpoint_final gets the selected weights (the best combined score), and the fold is marked finished."""
        if not self.mtl_state.get("finished"):
            last_epoch = self.current_epoch - 1  # on_epoch_end already counted the last epoch
            weights, message = selection.final_weights(self.mtl_state, last_epoch, self._best_weights,
                                                       os.path.join(self.output_folder, 'checkpoint_best.pth'))
            if weights is not None:
                unwrap(self.network).load_state_dict(weights)
            self.mtl_state.update(finished=True,
                                  final_weights_epoch=last_epoch if weights is None else self.mtl_state["best_epoch"])
            self.print_to_log_file(f"End of training: {message}", also_print_to_console=True)
        super().on_train_end()

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, filename: str) -> None:
        save_atomically(super().save_checkpoint, filename)
        if self.local_rank == 0 and not self.disable_checkpointing:
            selection.save_state(filename, self.mtl_state)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        super().load_checkpoint(filename_or_checkpoint)
        self._continued = True
        if isinstance(filename_or_checkpoint, str):
            self.mtl_state = {**selection.new_state(), **selection.load_state(filename_or_checkpoint, self.mtl_state)}

    # ------------------------------------------------------------------ whole-case validation
    def perform_actual_validation(self, save_probabilities: bool = False):
        """nnU-Net's whole-case validation run by our engine: one sliding window per case gives masks and heads."""
        summary = validate(self, save_probabilities)
        if summary is not None:
            self.print_to_log_file(f"Whole-case head validation: {summary['headline']}", also_print_to_console=True)
