"""``nnUNetTrainerMiMPretrain`` and ``nnUNetTrainerMAEPretrain``: self-supervised pre-training
inside ``nnUNetv2_train``. Labels are never read for the loss. This file holds nnU-Net's hooks; what they
call lives beside it: the loaders (loading.py), the step over micro-steps (stepping.py), the checkpoint's
extra state (checkpoint.py), the objective (objective.py), the curves and collapse check (health.py), the
reconstruction picture (preview.py).

What changes against ``nnUNetTrainer`` (one hook each):
  __init__               plan adapted to the pre-training network; the recipe (recipe.py): gradient
                         accumulation to ``effective_batch``, lr scaled on it
  _set_batch_size_and_oversample  the micro-batch that fits the device (stepping.py)
  configure_optimizers   AdamW (0.9, 0.95), no decay on norms/biases, warm-up + cosine in optimizer
                         steps
  initialize             images only: the label files are never opened (a collection has none);
                         seeded with NNUNET_MIM_SEED (``seeding.py``)
  get_dataloaders        nnU-Net's loader, crops of ``crop_factor`` x the patch, no augmentation,
                         cases drawn uniformly or per source (a collection's setting);
                         validation = a fixed set of crops drawn once (comparable between epochs)
  on_train_epoch_start   the learning rate of the epoch's first optimizer step
  train_step             one micro-step: levels built on the device, one batched forward, backward
                         (DDP synchronises only the last micro-step of each optimizer step); a
                         non-finite micro-step discards its whole accumulation, counted
  validation_step        the same losses under fixed masks
  on_*_epoch_end         every loss term logged per epoch; best checkpoint by validation loss;
                         snapshots at 0, 25 and 50% of the run; a
                         collapse (``feature_std``, ``target_std``) or discarded steps said in the log
  perform_actual_validation  a reconstruction picture instead of segmentation metrics
"""
import math
import os
from time import time
from typing import List, Optional

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import join
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.helpers import dummy_context
from torch import autocast
from torch import distributed as dist

from nnunet_mim import pretrained_loading
from nnunet_mim.architecture.network import unwrap_network
from nnunet_mim.backbones.hybrid import HybridBackbone
from nnunet_mim.masking import LevelConfig, build_levels
from nnunet_mim.precision import autocast_dtype, describe
from nnunet_mim.pretraining.checkpoint import PretrainingCheckpointMixin
from nnunet_mim.pretraining.data import (ImagesOnlyDataset, check_images_fit, load_collection_manifest,
                                         sampling_probabilities)
from nnunet_mim.pretraining.health import collapse_warnings, plot_progress
from nnunet_mim.pretraining.loading import (VALIDATION_SEED, crop_augmentation, fixed_validation_batches,
                                            training_loader)
from nnunet_mim.pretraining.objective import COLLAPSE_THRESHOLDS, loss_term_names, mim_objective
from nnunet_mim.pretraining.preview import save_reconstruction_preview
from nnunet_mim.pretraining.recipe import PretrainingRecipe
from nnunet_mim.pretraining.stepping import AccumulatedStepMixin
from nnunet_mim.run_length import RunLengthFromClassAttributes
from nnunet_mim.schedule import WarmupCosineLR, adamw_param_groups
from nnunet_mim.seeding import run_seed, seed_generators

pretrained_loading.install()  # -pretrained_weights read without running code (pretrained_loading.py)


class nnUNetTrainerMiMPretrain(HybridBackbone, AccumulatedStepMixin, PretrainingCheckpointMixin,
                               RunLengthFromClassAttributes, nnUNetTrainer):
    method = "MiM"
    levels = LevelConfig()
    reconstruction_weights = (1.0, 1.0, 1.0)
    alignment_weight = 0.1
    # BYOL's form of the alignment heads: a predictor, a moving-average target, batch-normalised hidden
    # layers; the authors' form (both False) collapses (docs/method.md, measured)
    alignment_predictor = True
    alignment_batch_norm = True
    # the moving-average target's momentum (predictor form), from the first to the last optimizer step along a
    # cosine, as BYOL schedules it (BYOL: 0.996 -> 1.0); constant 0.99 by default, the value every measurement
    # here ran with (docs/method.md)
    alignment_target_momentum = (0.99, 0.99)
    epochs = 800
    warmup_epochs = 40
    val_iterations_per_epoch = 10
    checkpoint_every = 10
    # checkpoint_epoch_NNNN.pth kept at these shares of the run (0: the initialised network), besides
    # checkpoint_final.pth: what a linear probe reads to see whether features improve with training
    snapshot_fractions = (0.0, 0.25, 0.5)
    # the recipe (recipe.py): crops per optimizer step, reached by gradient accumulation over micro-steps
    # of the plan's batch, and the lr per 256 crops of it. Chosen by measurement
    # (docs/experiments/44-the-pre-training-recipe.md): on the CPU, accumulating to 8-512 crops learnt
    # less per crop seen than stepping on every plan batch; lr 1e-3 at batch 2, the rate the paper's
    # 1e-4 per 256 gives only at 2,560 crops (2e-3 learnt faster at preset T; kept lower for B). Untested on a GPU.
    effective_batch = 2
    base_lr = 1e-3 * 256 / 2
    # crops per forward on each GPU; None: the largest that fits the device (pretraining/memory.py), the
    # rest of the plan's batch reached by accumulation. NNUNET_MIM_MICRO_BATCH overrides it
    micro_batch: Optional[int] = None
    augmentation = "none"          # or "intensity", "spatial+intensity" (nnU-Net's training transforms)
    foreground_crop_fraction = 0.0  # share of crops centred on the body / labelled foreground

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        # the network's plan: the backbone's (backbones/; the hybrid's by default)
        super().__init__(self.pretraining_plans(plans, configuration), configuration, fold, dataset_json, device)
        self.recipe = PretrainingRecipe(self.configuration_manager.batch_size, self.effective_batch, self.base_lr)
        self.warmup_epochs_of_run = self.warmup_epochs  # run_length() decides, with num_epochs
        # an epoch is whole optimizer steps, so that checkpoints fall on accumulation boundaries
        self.optimizer_steps_per_epoch = max(1, round(self.iterations_per_epoch / self.recipe.accumulation_steps))
        self.num_iterations_per_epoch = self.recipe.micro_steps(self.optimizer_steps_per_epoch)
        self.micro_step = 0  # within the epoch
        self.weight_decay = 0.05
        # crops centred on the body (collections) or labelled foreground (nnU-Net datasets) for
        # this fraction of each batch; 0 = uniform positions, labels play no part at all
        self.oversample_foreground_percent = self.foreground_crop_fraction
        self.enable_deep_supervision = False
        # seeded: the same command gives the same run (with nnUNet_n_proc_DA=0, background
        # workers draw their own crops); --c restores every generator from the checkpoint
        self.seed = run_seed()
        seed_generators(self.seed, self.local_rank)
        self.checkpoint_conv_blocks = False  # decided with the micro-batch (_set_batch_size_and_oversample)
        self.amp_dtype = None  # decided in initialize(), on the device training runs on (precision.py)
        self.skipped_steps = 0  # optimizer steps discarded
        self.accumulated_loss = None  # finite iff every micro-step of the accumulation was
        self._val_counter = 0
        self.loss_terms = loss_term_names(self.levels.num_levels, self.alignment_weight > 0)
        logged = self.logger.local_logger.my_fantastic_logging
        for name in self.loss_terms:
            logged.setdefault(f"train_{name}", [])
            logged.setdefault(f"val_{name}", [])
        logged.setdefault("skipped_steps", [])

    @classmethod
    def alignment_kwargs(cls) -> dict:
        """The network keywords of this trainer's alignment heads (none for MAE and the ablation without
        alignment): what the network it trains and the memory it is predicted to take are built from."""
        return dict(alignment_pairs=cls.levels.num_levels - 1 if cls.alignment_weight > 0 else 0,
                    alignment_predictor=cls.alignment_predictor, alignment_batch_norm=cls.alignment_batch_norm)

    # ---- optimisation -------------------------------------------------------------------
    def run_length(self):
        """(epochs, warm-up epochs) of the run: the class's ``epochs`` and ``warmup_epochs`` (set in __init__);
        the paper's recipe counts them from the number of training cases (variants.PaperRecipe)."""
        return self.num_epochs, self.warmup_epochs_of_run

    def configure_optimizers(self):
        self.num_epochs, self.warmup_epochs_of_run = self.run_length()
        self.initial_lr = self.recipe.lr
        optimizer = torch.optim.AdamW(adamw_param_groups(self.network, self.weight_decay), lr=self.initial_lr,
                                      betas=(0.9, 0.95))
        per_epoch = self.optimizer_steps_per_epoch  # the schedule counts optimizer steps
        return optimizer, WarmupCosineLR(optimizer, self.initial_lr, self.run_warmup_epochs * per_epoch,
                                         self.num_epochs * per_epoch)

    @property
    def run_warmup_epochs(self) -> int:
        """``warmup_epochs``, at most a tenth of the run (at least one epoch)."""
        return min(self.warmup_epochs_of_run, max(1, self.num_epochs // 10))

    def initialize(self):
        folder = self.preprocessed_dataset_folder
        if not os.path.isdir(folder) or not any(f.endswith((".b2nd", ".npz", ".npy")) for f in os.listdir(folder)):
            raise RuntimeError(f"no preprocessed images in {folder}: run nnUNetv2_preprocess -d "
                               f"{self.plans_manager.dataset_name} -c {self.configuration_name} (a labelled dataset) "
                               "or nnunet-mim pretrain-dataset create (images without labels)")
        super().initialize()
        # decided here, not in __init__: a torchrun launch moves a DDP trainer to its LOCAL_RANK device (or the
        # CPU) after nnU-Net's __init__ put it on cuda:<global rank> (nnunet_mim/train.py)
        self.amp_dtype = autocast_dtype(self.device)
        # only fp16 needs nnU-Net's gradient scaler (which nnU-Net makes for every CUDA run, bf16 too)
        self.grad_scaler = torch.amp.GradScaler(self.device.type) if self.amp_dtype == torch.float16 else None
        if self.checkpoint_conv_blocks:  # the memory model's decision, for the hybrid's conv stages only
            for stage in self.pretrain_network.encoder.stages:
                stage.checkpoint_blocks = True
        if self.dataset_class is nnUNetDatasetBlosc2:
            self.dataset_class = ImagesOnlyDataset
        rank = dist.get_rank() if self.is_ddp else 0
        self.mask_generator = torch.Generator().manual_seed(self.seed * 1000 + rank)  # per-rank masks differ

    def _do_i_compile(self) -> bool:
        # nnU-Net compiles every CUDA run's network unless nnUNet_compile says otherwise. Pre-training compiles
        # only when nnUNet_compile asks for it: the masked forward compiles to 5 graphs (3 breaks: the encoder's
        # .item() on the visible-token counts) and 0 recompiles at a fixed patch (MiM's and MAE's visible counts
        # do not change between steps), but no GPU has yet measured what inductor gains there
        # (benchmarks/gpu_check.py does; docs/experiments/47-torch-compile.md)
        if not super()._do_i_compile():
            return False
        if os.environ.get("nnUNet_compile", "").lower() in ("true", "1", "t"):
            return True
        self.print_to_log_file("torch.compile is off for pre-training until a GPU has measured its gain; "
                               "nnUNet_compile=t turns it on (docs/usage.md)")
        return False

    @property
    def pretrain_network(self):
        return unwrap_network(self.network)

    def on_train_start(self):
        super().on_train_start()
        self.print_to_log_file(f"{self.method} pre-training recipe: {self.recipe.describe()}; "
                               f"{self.optimizer_steps_per_epoch} optimizer steps per epoch")
        self.print_to_log_file(describe(self.amp_dtype))
        if not self.continued and 0 in self.snapshot_epochs:
            self.save_checkpoint(join(self.output_folder, "checkpoint_epoch_0000.pth"), epochs_done=0)

    @property
    def snapshot_epochs(self) -> List[int]:
        """Epochs done at which checkpoint_epoch_NNNN.pth is written (the final one excepted)."""
        return sorted({round(f * self.num_epochs) for f in self.snapshot_fractions} - {self.num_epochs})

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
        probabilities = sampling_probabilities(dataset_tr.identifiers,
                                               load_collection_manifest(self.preprocessed_dataset_folder_base))
        train = training_loader(dataset_tr, *crop_augmentation(self, crop), probabilities,
                                self.device.type == "cuda", **loader)
        return train, fixed_validation_batches(dataset_val, crop, self.num_val_iterations_per_epoch, **loader)

    # ---- steps ---------------------------------------------------------------------------
    def _objective(self, crops: torch.Tensor, generator: torch.Generator):
        crops = crops.to(self.device, non_blocking=True)
        levels = build_levels(crops, self.levels, generator)
        with autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else dummy_context():
            # the masked forward goes through self.network so that a DDP wrapper sees it
            terms = mim_objective(self.network, self.pretrain_network.alignment, levels, self.levels.token_size,
                                  self.reconstruction_weights, self.alignment_weight)
        return levels, terms

    def on_train_epoch_start(self):
        # nnU-Net's hook, with the schedule counted in optimizer steps instead of epochs
        self.micro_step = 0
        self.network.train()
        self.lr_scheduler.step(self.optimizer_step)
        self.print_to_log_file("")
        self.print_to_log_file(f"Epoch {self.current_epoch}")
        self.print_to_log_file(f"Current learning rate: {self.optimizer.param_groups[0]['lr']:.4g}")
        self.logger.log("lrs", self.optimizer.param_groups[0]["lr"], self.current_epoch)

    def train_step(self, batch: dict) -> dict:
        """One micro-step; every ``accumulation_steps``-th ends in an optimizer step."""
        accumulation = self.recipe.accumulation_steps
        last = (self.micro_step + 1) % accumulation == 0
        if self.micro_step % accumulation == 0:
            self.lr_scheduler.step(self.optimizer_step)
            self.optimizer.zero_grad(set_to_none=True)
            self.accumulated_loss = torch.zeros((), device=self.device)
        # DDP all-reduces the gradients once per optimizer step, in the backward of its last micro-step
        with self.network.no_sync() if self.is_ddp and not last else dummy_context():
            _, terms = self._objective(batch["data"], self.mask_generator)
            loss = terms["loss"]
            self.accumulated_loss += loss.detach().float()
            # a non-finite micro-step still runs its backward (DDP waits for it on every rank); its
            # accumulation is discarded below
            scaled = loss / accumulation
            (self.grad_scaler.scale(scaled) if self._uses_scaler() else scaled).backward()
        self.micro_step += 1
        stepped = self._optimizer_step() if last else True
        return {"skipped": int(not stepped), **{k: v.detach().float().cpu().numpy() for k, v in terms.items()}}

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._val_counter = 0

    def validation_step(self, batch: dict) -> dict:
        generator = torch.Generator().manual_seed(VALIDATION_SEED + self._val_counter)  # fixed masks
        self._val_counter += 1
        _, terms = self._objective(batch["data"], generator)
        return {k: v.detach().float().cpu().numpy() for k, v in terms.items()}

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
            self.print_to_log_file(f"WARNING: {get('skipped_steps', -1)} optimizer steps discarded this epoch (a "
                                   "non-finite loss or gradient in their accumulation)")
        self.warn_if_collapsed()
        epoch_time = get("epoch_end_timestamps", -1) - get("epoch_start_timestamps", -1)
        self.print_to_log_file(f"Epoch time: {epoch_time:.2f} s")

        epoch = self.current_epoch
        if (epoch + 1) % self.save_every == 0 and epoch != self.num_epochs - 1:
            self.save_checkpoint(join(self.output_folder, "checkpoint_latest.pth"))
            self.save_reconstruction_preview(f"reconstruction_epoch_{epoch + 1:04d}.png", epoch + 1)
        if epoch + 1 in self.snapshot_epochs:
            self.save_checkpoint(join(self.output_folder, f"checkpoint_epoch_{epoch + 1:04d}.pth"))
        val_loss = get("val_losses", -1)
        if self._best_ema is None or (math.isfinite(val_loss) and val_loss < self._best_ema):
            self._best_ema = val_loss  # nnU-Net's "best" slot, here the lowest validation loss
            self.save_checkpoint(join(self.output_folder, "checkpoint_best.pth"))
        if self.local_rank == 0:
            self.plot_losses()
        self.current_epoch += 1

    def warn_if_collapsed(self) -> None:
        """Say so in the log while a collapse monitor has stayed under its threshold for several epochs."""
        monitors = [name for name in COLLAPSE_THRESHOLDS if name in self.loss_terms]
        for warning in collapse_warnings({name: self.logger.get_value(f"train_{name}", None) for name in monitors},
                                         self.run_warmup_epochs):
            self.print_to_log_file(warning)

    # ---- outputs -------------------------------------------------------------------------
    def save_reconstruction_preview(self, name: str, epochs_done: int) -> None:
        if self.local_rank != 0 or self.dataloader_val is None:
            return
        crops = next(self.dataloader_val)["data"][:1].to(self.device)
        save_reconstruction_preview(self.pretrain_network, crops, self.levels, VALIDATION_SEED,
                                    join(self.output_folder, name), f"{self.method} pre-training, after {epochs_done} "
                                    "epochs")

    def plot_losses(self) -> None:
        plot_progress(lambda key: self.logger.get_value(key, None), self.loss_terms,
                      f"{self.method} pre-training recipe: {self.recipe.describe()}", self.method,
                      join(self.output_folder, "progress.png"))

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


class nnUNetTrainerMiMPretrainNoAlign(nnUNetTrainerMiMPretrain):
    """Ablation: MiM's three levels without the cross-level alignment loss."""
    alignment_weight = 0.0
