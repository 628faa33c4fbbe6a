"""``nnUNetTrainerMiMFinetune`` and ``nnUNetTrainerMiMScratch``: the hybrid network in nnU-Net's
auto-configured pipeline, with and without pre-trained weights. Both differ from each other only
in where the initial weights come from.

What changes against ``nnUNetTrainer``:
  __init__              the dataset's plan with the hybrid network (``plans.adapt_plans``); the
                        adapted plan is what training saves, so prediction needs no extra flag
  configure_optimizers  AdamW with a linear warm-up (10% of the epochs), then cosine; optional
                        layer-wise lr decay and a decoder-first start (``finetuning/param_groups.py``)
  __init__              also seeds numpy and torch (weights, crops, augmentation) with NNUNET_MIM_SEED
                        (0 unless set, ``seeding.py``), as pre-training
  initialize            remembers the random initialisation, to tell later what was loaded
  on_train_start        load report; fails loudly if the pre-trained encoder did not load
  on_train_epoch_end    stops a run whose training loss was not finite for a whole epoch
"""
import warnings

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join, save_json
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mim.architecture.network import unwrap_network
from nnunet_mim.checkpointing import AtomicCheckpointMixin
from nnunet_mim.finetuning.checkpoint import inspect_pretrained_checkpoint, normalisation_difference
from nnunet_mim.finetuning.load_report import LoadReport, pretrained_weights_from_argv, snapshot
from nnunet_mim.plans import adapt_plans
from nnunet_mim.finetuning.param_groups import finetuning_param_groups
from nnunet_mim.run_length import RunLengthFromClassAttributes
from nnunet_mim.schedule import WarmupCosineLR
from nnunet_mim.seeding import run_seed, seed_generators
from nnunet_mim import pretrained_loading

pretrained_loading.install()  # -pretrained_weights read once, without running code (pretrained_loading.py)


class nnUNetTrainerMiMFinetune(AtomicCheckpointMixin, RunLengthFromClassAttributes, nnUNetTrainer):
    encoder_preset = "B"
    min_encoder_loaded_fraction = 0.95
    peak_lr = 3e-4                 # AdamW lr after the warm-up
    layer_decay = 1.0              # lr x layer_decay^(layers above); 1 = off (finetuning/param_groups.py)
    encoder_frozen_fraction = 0.0  # share of the epochs the pre-trained encoder waits for the decoder

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        plans = adapt_plans(plans, configuration, self.encoder_preset)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.peak_lr
        self.weight_decay = 0.05
        self.warmup_fraction = 0.1
        self._initial_weights = None
        self._checkpoint_keys = None  # keys of the -pretrained_weights file, read in initialize
        # seeded like pre-training: fine-tuning and scratch runs then share the decoder's random
        # initialisation, the crops and the augmentation, and differ only in the encoder's weights
        # (exactly so with single-process data loading, nnUNet_n_proc_DA=0)
        self.seed = run_seed()
        seed_generators(self.seed, self.local_rank)

    def configure_optimizers(self):
        encoder_start = round(self.encoder_frozen_fraction * self.num_epochs)
        groups = finetuning_param_groups(self.segmentation_network, self.weight_decay, self.layer_decay, encoder_start)
        optimizer = torch.optim.AdamW(groups, lr=self.initial_lr, betas=(0.9, 0.999))
        warmup = max(1, round(self.warmup_fraction * self.num_epochs))
        return optimizer, WarmupCosineLR(optimizer, self.initial_lr, warmup, self.num_epochs)

    @property
    def segmentation_network(self):
        return unwrap_network(self.network)

    def initialize(self):
        super().initialize()
        self._initial_weights = snapshot(self.segmentation_network.state_dict())
        checkpoint_file = pretrained_weights_from_argv()
        if checkpoint_file is not None:  # runs before nnU-Net's loader, to fail with a useful message
            self._checkpoint_keys, pretraining = inspect_pretrained_checkpoint(checkpoint_file, self._initial_weights,
                                                                               self.encoder_preset)
            difference = normalisation_difference(pretraining, self.configuration_manager.normalization_schemes,
                                                  self.plans_manager.foreground_intensity_properties_per_channel)
            if difference:
                warnings.warn(difference)
                self.print_to_log_file(f"WARNING: {difference}")

    def on_train_start(self):
        super().on_train_start()
        if not self.continued:  # a continued run (--c) reported when it started
            self.check_initial_weights()

    def on_train_epoch_end(self, train_outputs):
        super().on_train_epoch_end(train_outputs)
        loss = self.logger.get_value("train_losses", -1)
        if not np.isfinite(loss):  # every step of the epoch (nnU-Net's mean): the run learns nothing more
            raise RuntimeError(
                f"fine-tuning diverged: the training loss of epoch {self.current_epoch} was not finite ({loss}). "
                "Nothing after this epoch would be a result; lower the learning rate (peak_lr) or check the input "
                "images for NaN. The last checkpoint is kept.")

    def check_initial_weights(self) -> None:
        network = self.segmentation_network
        record = network.get_pretraining_record()
        report = LoadReport(self._initial_weights, network.state_dict(), record, self._checkpoint_keys)
        self.print_to_log_file(report.text(), add_timestamp=False)
        if self.local_rank == 0:
            with open(join(self.output_folder, "pretrained_weights_report.txt"), "w") as f:
                f.write(report.text() + "\n")
            save_json({"checkpoint": pretrained_weights_from_argv(),
                       "pretraining": None if record is None else record.__dict__,
                       "loaded": report.loaded, "not_loaded": report.unchanged,
                       "encoder_fraction": report.encoder_fraction,
                       "unused_checkpoint_keys": report.unused_checkpoint_keys},
                      join(self.output_folder, "pretrained_weights_report.json"), sort_keys=False)
        self.validate_initial_weights(report)

    def validate_initial_weights(self, report: LoadReport) -> None:
        if report.record is None or report.encoder_fraction < self.min_encoder_loaded_fraction:
            loaded = ("no pre-trained weights were loaded" if report.record is None else
                      f"only {report.encoder_fraction:.0%} of the encoder was loaded (threshold "
                      f"{self.min_encoder_loaded_fraction:.0%})")
            raise RuntimeError(
                f"{self.__class__.__name__} needs pre-trained weights, but {loaded}. Pass the pre-training "
                "checkpoint with `-pretrained_weights .../checkpoint_final.pth`, or train from scratch with "
                "nnUNetTrainerMiMScratch. See pretrained_weights_report.txt in the output folder.")
        record, cm = report.record, self.configuration_manager
        if record.input_channels != self.num_input_channels:
            self.print_to_log_file(f"input channels: pre-trained with {record.input_channels}, adapted to "
                                   f"{self.num_input_channels} (mean-kernel rule, nnunet-mim adapt-checkpoint)")
        for what, before, now in (("spacing", record.spacing, tuple(cm.spacing)),
                                  ("patch size", record.patch_size, tuple(cm.patch_size))):
            ratio = np.array(now, dtype=float) / np.array(before, dtype=float)
            if np.any(ratio > 2) or np.any(ratio < 0.5):
                message = (f"pre-training {what} {before} differs from this plan's {now} by more than 2x on some "
                           f"axis (ratio {np.round(ratio, 2).tolist()})")
                warnings.warn(message)
                self.print_to_log_file(f"WARNING: {message}")


class nnUNetTrainerMiMScratch(nnUNetTrainerMiMFinetune):
    """Same network, plan and schedule as fine-tuning, from random weights."""

    def validate_initial_weights(self, report: LoadReport) -> None:
        if report.record is not None:
            raise RuntimeError("nnUNetTrainerMiMScratch trains from random weights, but pre-trained weights were "
                               "loaded; use nnUNetTrainerMiMFinetune for that")
