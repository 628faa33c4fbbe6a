"""``nnUNetTrainerMiMPretrain`` and ``nnUNetTrainerMAEPretrain``: self-supervised pre-training
inside ``nnUNetv2_train``. Labels are never read for the loss.

What changes against ``nnUNetTrainer`` (one hook each):
  __init__               plan adapted to the pre-training network; paper's recipe
  configure_optimizers   AdamW (0.9, 0.95), no decay on norms/biases, warm-up + cosine
  initialize             images only: the label files are never opened (a collection has none);
                         seeded with NNUNET_MIM_SEED (``seeding.py``)
  get_dataloaders        nnU-Net's loader, crops of ``crop_factor`` x the patch, no augmentation,
                         cases drawn uniformly or per source (a collection's setting);
                         validation = a fixed set of crops drawn once (comparable between epochs)
  train_step             levels built on the device, one batched forward, NaN/inf guard
  validation_step        the same losses under fixed masks
  on_*_epoch_end         every loss term logged per epoch; best checkpoint by validation loss
  perform_actual_validation  a reconstruction picture instead of segmentation metrics
"""
import itertools
import math
import os
from dataclasses import asdict
from time import time
from typing import List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter  # noqa: E402
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter  # noqa: E402
from batchgenerators.utilities.file_and_folder_operations import join  # noqa: E402
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform  # noqa: E402
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform  # noqa: E402
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform  # noqa: E402
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size  # noqa: E402
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader  # noqa: E402
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2  # noqa: E402
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA  # noqa: E402
from nnunetv2.utilities.helpers import dummy_context  # noqa: E402
from torch import autocast  # noqa: E402
from torch import distributed as dist  # noqa: E402

from nnunet_mim.architecture.network import unwrap_network  # noqa: E402
from nnunet_mim.checkpointing import AtomicCheckpointMixin  # noqa: E402
from nnunet_mim.masking import LevelConfig, build_levels  # noqa: E402
from nnunet_mim.plans import PRETRAIN_NETWORK_CLASS, adapt_plans  # noqa: E402
from nnunet_mim.pretraining.data import (ImagesOnlyDataset, check_images_fit, load_collection_manifest,  # noqa: E402
                                         sampling_probabilities)
from nnunet_mim.pretraining.objective import mim_objective  # noqa: E402
from nnunet_mim.pretraining.preview import save_preview  # noqa: E402
from nnunet_mim.pretraining_record import PretrainingRecord  # noqa: E402
from nnunet_mim.schedule import WarmupCosineLR, adamw_param_groups  # noqa: E402
from nnunet_mim.seeding import run_seed, seed_generators  # noqa: E402

VALIDATION_SEED = 12345
AUGMENTATIONS = ("none", "intensity", "spatial+intensity")
SPATIAL_TRANSFORMS = (SpatialTransform, MirrorTransform, Convert3DTo2DTransform, Convert2DTo3DTransform)


class nnUNetTrainerMiMPretrain(AtomicCheckpointMixin, nnUNetTrainer):
    method = "MiM"
    encoder_preset = "B"
    levels = LevelConfig()
    reconstruction_weights = (1.0, 1.0, 1.0)
    alignment_weight = 0.1
    epochs = 800
    warmup_epochs = 40
    iterations_per_epoch = 250
    val_iterations_per_epoch = 10
    checkpoint_every = 10
    base_lr = 1e-4  # per 256 samples: lr = base_lr * global batch / 256 (the paper's scaling rule)
    augmentation = "none"          # or "intensity", "spatial+intensity" (nnU-Net's training transforms)
    foreground_crop_fraction = 0.0  # share of crops centred on the body / labelled foreground

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        plans = adapt_plans(plans, configuration, self.encoder_preset, self.levels.patch_multiple,
                            PRETRAIN_NETWORK_CLASS)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = self.epochs
        self.num_iterations_per_epoch = self.iterations_per_epoch
        self.num_val_iterations_per_epoch = self.val_iterations_per_epoch
        self.weight_decay = 0.05
        # crops centred on the body (collections) or labelled foreground (nnU-Net datasets) for
        # this fraction of each batch; 0 = uniform positions, labels play no part at all
        self.oversample_foreground_percent = self.foreground_crop_fraction
        self.enable_deep_supervision = False
        self.save_every = self.checkpoint_every
        # seeded: the same command gives the same run (with nnUNet_n_proc_DA=0, background
        # workers draw their own crops); --c restores every generator from the checkpoint
        self.seed = run_seed()
        seed_generators(self.seed, self.local_rank)
        self.skipped_steps = 0
        self._val_counter = 0
        self.loss_terms = [f"rec_l{i + 1}" for i in range(self.levels.num_levels)]
        if self.alignment_weight > 0:
            self.loss_terms += [f"align_l{i}_l{i + 1}" for i in range(1, self.levels.num_levels)]
            self.loss_terms.append("proj_std")  # logged and plotted with the losses, not part of them
        logged = self.logger.local_logger.my_fantastic_logging
        for name in self.loss_terms:
            logged.setdefault(f"train_{name}", [])
            logged.setdefault(f"val_{name}", [])
        logged.setdefault("skipped_steps", [])

    # ---- optimisation -------------------------------------------------------------------
    def configure_optimizers(self):
        # the plan's batch size is the global one; nnU-Net splits it over the GPUs of a DDP run
        self.initial_lr = self.base_lr * self.configuration_manager.batch_size / 256
        optimizer = torch.optim.AdamW(adamw_param_groups(self.network, self.weight_decay), lr=self.initial_lr,
                                      betas=(0.9, 0.95))
        warmup = min(self.warmup_epochs, max(1, self.num_epochs // 10))
        return optimizer, WarmupCosineLR(optimizer, self.initial_lr, warmup, self.num_epochs)

    def initialize(self):
        folder = self.preprocessed_dataset_folder
        if not os.path.isdir(folder) or not any(f.endswith((".b2nd", ".npz", ".npy")) for f in os.listdir(folder)):
            raise RuntimeError(f"no preprocessed images in {folder}: run nnUNetv2_preprocess -d "
                               f"{self.plans_manager.dataset_name} -c {self.configuration_name} (a labelled dataset) "
                               "or nnunet-mim pretrain-dataset create (images without labels)")
        super().initialize()
        if self.dataset_class is nnUNetDatasetBlosc2:
            self.dataset_class = ImagesOnlyDataset
        rank = dist.get_rank() if self.is_ddp else 0
        self.mask_generator = torch.Generator().manual_seed(self.seed * 1000 + rank)  # per-rank masks differ

    @property
    def pretrain_network(self):
        return unwrap_network(self.network)

    # ---- data --------------------------------------------------------------------------
    def get_dataloaders(self):
        patch = self.configuration_manager.patch_size
        self.levels.check_patch_size(patch)
        warning = self.levels.hierarchy_warning(patch)
        if warning:
            self.print_to_log_file(f"WARNING: {warning}")
        crop = [p * self.levels.crop_factor for p in patch]
        dataset_tr, dataset_val = self.get_tr_and_val_datasets()
        check_images_fit(dataset_tr, patch)
        loader = dict(batch_size=self.batch_size, final_patch_size=crop, label_manager=self.label_manager,
                      oversample_foreground_percent=self.oversample_foreground_percent)
        manifest = load_collection_manifest(self.preprocessed_dataset_folder_base)
        initial_crop, transforms = self.crop_augmentation(crop)
        dl_tr = nnUNetDataLoader(dataset_tr, patch_size=initial_crop, transforms=transforms, **loader,
                                 sampling_probabilities=sampling_probabilities(dataset_tr.identifiers, manifest))
        processes = get_allowed_n_proc_DA()
        if processes == 0:
            train = SingleThreadedAugmenter(dl_tr, None)
        else:
            train = NonDetMultiThreadedAugmenter(dl_tr, None, processes, max(6, processes // 2), None,
                                                 pin_memory=self.device.type == "cuda", wait_time=0.002)
        # a fixed validation set: same crops every epoch, drawn once with a fixed seed
        state = np.random.get_state()
        np.random.seed(VALIDATION_SEED)
        dl_val = nnUNetDataLoader(dataset_val, patch_size=crop, transforms=None, **loader)
        val_batches = [next(dl_val) for _ in range(self.num_val_iterations_per_epoch)]
        np.random.set_state(state)
        return train, itertools.cycle(val_batches)

    def crop_augmentation(self, crop: List[int]):
        """(size to cut, transforms): nnU-Net's own training transforms on the crops, all of them
        ("spatial+intensity"), only the intensity ones ("intensity"), or none (the default)."""
        if self.augmentation == "none":
            return crop, None
        if self.augmentation not in AUGMENTATIONS:
            raise ValueError(f"augmentation {self.augmentation!r}: choose one of {AUGMENTATIONS}")
        rotation, dummy_2d, _, mirror_axes = self.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        transforms = self.get_training_transforms(crop, rotation, None, mirror_axes, dummy_2d,
                                                  self.configuration_manager.use_mask_for_norm)
        if self.augmentation == "intensity":
            transforms.transforms = [t for t in transforms.transforms if not isinstance(t, SPATIAL_TRANSFORMS)]
            return crop, transforms
        # cut more than the crop, so that rotation and scaling find image content at the corners
        initial = [int(s) for s in get_patch_size(crop, rotation, rotation, rotation, (0.85, 1.25))]
        if dummy_2d:
            initial[0] = crop[0]
        return initial, transforms

    # ---- steps ---------------------------------------------------------------------------
    def _objective(self, crops: torch.Tensor, generator: torch.Generator):
        crops = crops.to(self.device, non_blocking=True)
        levels = build_levels(crops, self.levels, generator)
        with autocast(self.device.type, dtype=self._amp_dtype()) if self.device.type == "cuda" else dummy_context():
            # the masked forward goes through self.network so that a DDP wrapper sees it
            terms = mim_objective(self.network, self.pretrain_network.project, levels, self.levels.token_size,
                                  self.reconstruction_weights, self.alignment_weight)
        return levels, terms

    def _amp_dtype(self):
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    def train_step(self, batch: dict) -> dict:
        self.optimizer.zero_grad(set_to_none=True)
        _, terms = self._objective(batch["data"], self.mask_generator)
        loss = terms["loss"]
        if not self._finite_on_all_ranks(loss.detach()):
            return self._skip_step()
        uses_scaler = self.grad_scaler is not None and self._amp_dtype() == torch.float16
        (self.grad_scaler.scale(loss) if uses_scaler else loss).backward()
        if uses_scaler:
            self.grad_scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), 3.0)
        if uses_scaler:  # the scaler skips inf/nan steps itself and lowers its scale
            self.grad_scaler.step(self.optimizer)
            self.grad_scaler.update()
        elif not torch.isfinite(grad_norm):  # gradients are all-reduced: every rank sees the same norm
            return self._skip_step()
        else:
            self.optimizer.step()
        return {"skipped": 0, **{k: v.detach().float().cpu().numpy() for k, v in terms.items()}}

    def _finite_on_all_ranks(self, value: torch.Tensor) -> bool:
        finite = torch.isfinite(value).float()
        if self.is_ddp:  # all ranks must agree, or the ones that step wait forever for the others
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite)

    def _skip_step(self) -> dict:
        """A non-finite loss or gradient: skip the update rather than poison the weights; counted."""
        self.optimizer.zero_grad(set_to_none=True)
        self.skipped_steps += 1
        return {"skipped": 1, **{k: np.nan for k in ["loss", *self.loss_terms]}}

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._val_counter = 0

    def validation_step(self, batch: dict) -> dict:
        generator = torch.Generator().manual_seed(VALIDATION_SEED + self._val_counter)  # fixed masks
        self._val_counter += 1
        _, terms = self._objective(batch["data"], generator)
        return {k: v.detach().float().cpu().numpy() for k, v in terms.items()}

    def _mean_over_ranks(self, outputs: List[dict], key: str) -> float:
        values = np.array([o[key] for o in outputs], dtype=float)
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, values)
            values = np.concatenate(gathered)
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    def on_train_epoch_end(self, train_outputs: List[dict]):
        self.logger.log("train_losses", self._mean_over_ranks(train_outputs, "loss"), self.current_epoch)
        for name in self.loss_terms:
            self.logger.log(f"train_{name}", self._mean_over_ranks(train_outputs, name), self.current_epoch)
        self.logger.log("skipped_steps", int(sum(o["skipped"] for o in train_outputs)), self.current_epoch)

    def on_validation_epoch_end(self, val_outputs: List[dict]):
        self.logger.log("val_losses", self._mean_over_ranks(val_outputs, "loss"), self.current_epoch)
        for name in self.loss_terms:
            self.logger.log(f"val_{name}", self._mean_over_ranks(val_outputs, name), self.current_epoch)

    def on_epoch_end(self):
        self.logger.log("epoch_end_timestamps", time(), self.current_epoch)
        get = self.logger.get_value
        self.print_to_log_file("train_loss", np.round(get("train_losses", -1), 4),
                               " ".join(f"{n}={get(f'train_{n}', -1):.4f}" for n in self.loss_terms))
        self.print_to_log_file("val_loss", np.round(get("val_losses", -1), 4),
                               " ".join(f"{n}={get(f'val_{n}', -1):.4f}" for n in self.loss_terms))
        if get("skipped_steps", -1):
            self.print_to_log_file(f"WARNING: {get('skipped_steps', -1)} steps skipped (non-finite loss)")
        epoch_time = get("epoch_end_timestamps", -1) - get("epoch_start_timestamps", -1)
        self.print_to_log_file(f"Epoch time: {epoch_time:.2f} s")

        epoch = self.current_epoch
        if (epoch + 1) % self.save_every == 0 and epoch != self.num_epochs - 1:
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
            self.save_reconstruction_preview(f"reconstruction_epoch_{epoch + 1:04d}.png", epoch + 1)
        val_loss = get("val_losses", -1)
        if self._best_ema is None or (math.isfinite(val_loss) and val_loss < self._best_ema):
            self._best_ema = val_loss  # nnU-Net's "best" slot, here the lowest validation loss
            self.save_checkpoint(join(self.output_folder, "checkpoint_best.pth"))
        if self.local_rank == 0:
            self.plot_losses()
        self.current_epoch += 1

    # ---- outputs -------------------------------------------------------------------------
    def pretraining_record(self) -> PretrainingRecord:
        return PretrainingRecord(method=self.method, preset=self.encoder_preset, decoder_pretrained=False,
                                 input_channels=self.num_input_channels,
                                 patch_size=tuple(self.configuration_manager.patch_size),
                                 spacing=tuple(self.configuration_manager.spacing), epochs=self.current_epoch + 1)

    def save_checkpoint(self, filename: str) -> None:
        self.pretrain_network.pretraining_record.copy_(self.pretraining_record().to_tensor())
        super().save_checkpoint(filename)

    def checkpoint_extras(self) -> dict:
        cm = self.configuration_manager
        return {"mask_generator_state": self.mask_generator.get_state(), "numpy_rng_state": np.random.get_state(),
                "torch_rng_state": torch.get_rng_state(), "skipped_steps": self.skipped_steps,
                "method": self.method, "alignment_weight": self.alignment_weight,
                "encoder_preset": self.encoder_preset, "token_size": self.levels.token_size,
                "levels": asdict(self.levels), "patch_size": list(cm.patch_size), "spacing": list(cm.spacing),
                "normalization_schemes": list(cm.normalization_schemes),
                "foreground_intensity_properties_per_channel":
                    self.plans_manager.foreground_intensity_properties_per_channel}

    def restore_checkpoint_extras(self, extras: dict) -> None:
        if "mask_generator_state" in extras:
            if not self.was_initialized:
                self.initialize()
            self.mask_generator.set_state(extras["mask_generator_state"])
            np.random.set_state(extras["numpy_rng_state"])
            torch.set_rng_state(extras["torch_rng_state"])
            self.skipped_steps = extras.get("skipped_steps", 0)

    def save_reconstruction_preview(self, name: str, epochs_done: int) -> None:
        if self.local_rank != 0 or self.dataloader_val is None:
            return
        self.network.eval()
        with torch.no_grad():
            generator = torch.Generator().manual_seed(VALIDATION_SEED)
            crops = next(self.dataloader_val)["data"][:1].to(self.device)
            levels = build_levels(crops, self.levels, generator)
            predictions = [self.pretrain_network(lv.volumes, lv.hidden)[0] for lv in levels]
        save_preview(levels, predictions, self.levels.token_size, join(self.output_folder, name),
                     f"{self.method} pre-training, after {epochs_done} epochs")
        self.network.train()

    def plot_losses(self) -> None:
        get = lambda key: self.logger.get_value(key, None)  # noqa: E731
        epochs = range(len(get("val_losses")))
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        for split, ax in zip(["train", "val"], axes):
            ax.plot(epochs, get(f"{split}_losses")[:len(epochs)], "k-", lw=2, label="total")
            for name in self.loss_terms:
                ax.plot(epochs, get(f"{split}_{name}")[:len(epochs)], label=name)
            ax.set_title(f"{self.method} pre-training: {split} losses")
            ax.set_xlabel("epoch")
            ax.legend()
        fig.tight_layout()
        fig.savefig(join(self.output_folder, "progress.png"), dpi=80)
        plt.close(fig)

    def perform_actual_validation(self, save_probabilities: bool = False):
        """Pre-training has no segmentation to validate: save the final reconstruction picture."""
        if self.dataloader_val is None:
            self.dataloader_val = self.get_dataloaders()[1]
        # after training (or loading checkpoint_final for --val) current_epoch counts the epochs done
        self.save_reconstruction_preview("reconstruction_final.png", self.current_epoch)
        self.print_to_log_file("Pre-training done. Fine-tune with: nnUNetv2_train DATASET CONFIG FOLD "
                               "-tr nnUNetTrainerMiMFinetune -pretrained_weights "
                               + join(self.output_folder, "checkpoint_final.pth"))


class nnUNetTrainerMAEPretrain(nnUNetTrainerMiMPretrain):
    """SelfMedMAE: one level, 75% of tokens hidden at random, no alignment."""
    method = "MAE"
    levels = LevelConfig(num_levels=1, l1_mask_ratio=0.75)
    reconstruction_weights = (1.0,)
    alignment_weight = 0.0
