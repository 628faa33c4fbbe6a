"""``nnUNetTrainerMiMPretrain`` and ``nnUNetTrainerMAEPretrain``: self-supervised pre-training
inside ``nnUNetv2_train``. Labels are never read for the loss.

What changes against ``nnUNetTrainer`` (one hook each):
  __init__               plan adapted to the pre-training network; the recipe (recipe.py): gradient
                         accumulation to ``effective_batch``, lr scaled on it
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
import itertools
import math
import os
from dataclasses import asdict
from time import time
from typing import List, Optional

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
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels  # noqa: E402
from torch import autocast  # noqa: E402
from torch import distributed as dist  # noqa: E402

from nnunet_mim.architecture.network import unwrap_network  # noqa: E402
from nnunet_mim.checkpointing import AtomicCheckpointMixin  # noqa: E402
from nnunet_mim.masking import LevelConfig, build_levels  # noqa: E402
from nnunet_mim.plans import PRETRAIN_NETWORK_CLASS, adapt_plans  # noqa: E402
from nnunet_mim.pretraining.memory import (DoesNotFit, choose_micro_batch, device_memory,  # noqa: E402
                                           requested_micro_batch)
from nnunet_mim.pretraining.data import (ImagesOnlyDataset, check_images_fit, load_collection_manifest,  # noqa: E402
                                         sampling_probabilities)
from nnunet_mim.pretraining.objective import COLLAPSE_THRESHOLDS, mim_objective  # noqa: E402
from nnunet_mim.pretraining.preview import save_preview  # noqa: E402
from nnunet_mim.pretraining.recipe import PretrainingRecipe  # noqa: E402
from nnunet_mim.precision import autocast_dtype, describe  # noqa: E402
from nnunet_mim.pretraining_record import PretrainingRecord  # noqa: E402
from nnunet_mim.schedule import WarmupCosineLR, adamw_param_groups  # noqa: E402
from nnunet_mim.seeding import run_seed, seed_generators  # noqa: E402
from nnunet_mim import pretrained_loading  # noqa: E402

pretrained_loading.install()  # -pretrained_weights read without running code (pretrained_loading.py)

VALIDATION_SEED = 12345
COLLAPSE_EPOCHS = 3  # consecutive epochs of a collapse monitor under its threshold that make the log warn
AUGMENTATIONS = ("none", "intensity", "spatial+intensity")
SPATIAL_TRANSFORMS = (SpatialTransform, MirrorTransform, Convert3DTo2DTransform, Convert2DTo3DTransform)


class nnUNetTrainerMiMPretrain(AtomicCheckpointMixin, nnUNetTrainer):
    method = "MiM"
    encoder_preset = "B"
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
    iterations_per_epoch = 250
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
        plans = adapt_plans(plans, configuration, self.encoder_preset, self.levels.patch_multiple,
                            PRETRAIN_NETWORK_CLASS)
        plans["configurations"][configuration]["architecture"]["arch_kwargs"].update(self.alignment_kwargs())
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.recipe = PretrainingRecipe(self.configuration_manager.batch_size, self.effective_batch, self.base_lr)
        self.num_epochs, self.warmup_epochs_of_run = self.epochs, self.warmup_epochs  # run_length() decides
        # an epoch is whole optimizer steps, so that checkpoints fall on accumulation boundaries
        self.optimizer_steps_per_epoch = max(1, round(self.iterations_per_epoch / self.recipe.accumulation_steps))
        self.num_iterations_per_epoch = self.recipe.micro_steps(self.optimizer_steps_per_epoch)
        self.micro_step = 0  # within the epoch
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
        self.checkpoint_conv_blocks = False  # decided with the micro-batch (_set_batch_size_and_oversample)
        self.amp_dtype = None  # decided in initialize(), on the device training runs on (precision.py)
        self.skipped_steps = 0  # optimizer steps discarded
        self.accumulated_loss = None  # finite iff every micro-step of the accumulation was
        self._val_counter = 0
        self.loss_terms = [f"rec_l{i + 1}" for i in range(self.levels.num_levels)]
        if self.alignment_weight > 0:
            self.loss_terms += [f"align_l{i}_l{i + 1}" for i in range(1, self.levels.num_levels)]
            self.loss_terms += list(COLLAPSE_THRESHOLDS)  # logged and plotted, not part of the loss
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

    @property
    def optimizer_step(self) -> int:
        """Index of the optimizer step the current micro-step accumulates into, over the whole run."""
        return self.current_epoch * self.optimizer_steps_per_epoch + self.micro_step // self.recipe.accumulation_steps

    def _set_batch_size_and_oversample(self):
        """nnU-Net's batch per process, then the micro-batch that fits this device's memory: the step's peak
        is predicted before it runs (pretraining/memory.py); accumulation keeps the recipe's effective batch
        and its lr; the conv blocks are checkpointed only where one sample does not fit otherwise."""
        super()._set_batch_size_and_oversample()
        device_bytes, requested = device_memory(self.device), requested_micro_batch(self.micro_batch)
        if device_bytes is None and requested is None:
            return  # the CPU: nothing to plan against
        world = dist.get_world_size() if self.is_ddp else 1
        channels = determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json)
        try:
            step = choose_micro_batch(self.configuration_manager.network_arch_init_kwargs, self.levels,
                                      self.configuration_manager.patch_size, self.batch_size,
                                      device_bytes or float("inf"), channels, autocast_dtype(self.device), requested)
        except DoesNotFit as error:
            raise RuntimeError(f"{self.method} pre-training: {error}") from None
        chosen = torch.tensor([step.micro_batch, -int(step.checkpointing)])
        if self.is_ddp:  # every rank must run the same number of micro-steps
            dist.all_reduce(chosen, op=dist.ReduceOp.MIN)
            if int(chosen[0]) < self.batch_size and self.configuration_manager.batch_size % world:
                raise RuntimeError(f"micro-batch {int(chosen[0])}: the plan's batch of "
                                   f"{self.configuration_manager.batch_size} does not split evenly over {world} "
                                   "processes; run on a number of GPUs that divides it")
        micro_batch, self.checkpoint_conv_blocks = int(chosen[0]), bool(chosen[1])
        self.print_to_log_file(f"predicted peak memory of a step, {step.describe()}; device "
                               f"{(device_bytes or 0) / 2 ** 30:.0f} GiB")
        if micro_batch != self.batch_size:
            accumulation = self.batch_size // micro_batch
            self.recipe = PretrainingRecipe(micro_batch * world, self.recipe.effective_batch, self.base_lr)
            self.num_iterations_per_epoch = self.recipe.micro_steps(self.optimizer_steps_per_epoch)
            self.print_to_log_file(f"micro-batch {micro_batch} instead of the plan's {self.batch_size} per process, "
                                   f"{accumulation}x the accumulation: the same effective batch and lr")
            self.batch_size = micro_batch

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
        for stage in self.pretrain_network.encoder.stages:
            stage.checkpoint_blocks = self.checkpoint_conv_blocks
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

    def _uses_scaler(self) -> bool:
        return self.grad_scaler is not None

    def _optimizer_step(self) -> bool:
        """Apply the accumulated gradients; False, and the weights unchanged, where a micro-step of
        the accumulation or the gradient norm was not finite (all ranks decide alike)."""
        finite = self._finite_on_all_ranks(self.accumulated_loss)
        if self._uses_scaler():
            self.grad_scaler.unscale_(self.optimizer)
        # the gradients are all-reduced: every rank sees the same norm
        grad_norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), 3.0)
        finite = finite and bool(torch.isfinite(grad_norm))
        if finite and self._uses_scaler():
            self.grad_scaler.step(self.optimizer)
        elif finite:
            self.optimizer.step()
        if self._uses_scaler():
            self.grad_scaler.update()  # lowers the scale after an overflow
        self.optimizer.zero_grad(set_to_none=True)
        if not finite:
            self.skipped_steps += 1
        elif self.pretrain_network.alignment is not None:
            self.pretrain_network.alignment.update_target(self.target_momentum(self.optimizer_step))
        return finite

    def target_momentum(self, step: int) -> float:
        """``alignment_target_momentum`` at optimizer step ``step`` of the run (cosine from start to end)."""
        start, end = self.alignment_target_momentum
        progress = min(1.0, step / max(1, self.num_epochs * self.optimizer_steps_per_epoch - 1))
        return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2

    def _finite_on_all_ranks(self, value: torch.Tensor) -> bool:
        finite = torch.isfinite(value).float()
        if self.is_ddp:  # all ranks must agree, or the ones that step wait forever for the others
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite)

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
        what = {"feature_std": "the encoder maps every volume to nearly one vector",
                "target_std": "the alignment heads map every volume to nearly one vector"}
        for name, threshold in COLLAPSE_THRESHOLDS.items():
            if name not in self.loss_terms:
                continue
            # after the warm-up: a form that collapses does so in its first steps and may recover from there
            # (docs/method.md: BYOL's form without batch norm, measured)
            recent = self.logger.get_value(f"train_{name}", None)[self.run_warmup_epochs:][-COLLAPSE_EPOCHS:]
            if len(recent) == COLLAPSE_EPOCHS and all(v < threshold for v in recent):
                self.print_to_log_file(
                    f"WARNING: the alignment has collapsed: {name} has been below {threshold} for {COLLAPSE_EPOCHS} "
                    f"epochs ({recent[-1]:.2g} now): {what[name]}, and the alignment terms teach the encoder "
                    "nothing. See docs/method.md.")

    # ---- outputs -------------------------------------------------------------------------
    def pretraining_record(self, epochs_done: int) -> PretrainingRecord:
        return PretrainingRecord(method=self.method, preset=self.encoder_preset, decoder_pretrained=False,
                                 input_channels=self.num_input_channels,
                                 patch_size=tuple(self.configuration_manager.patch_size),
                                 spacing=tuple(self.configuration_manager.spacing), epochs=epochs_done)

    def save_checkpoint(self, filename: str, epochs_done: Optional[int] = None) -> None:
        """nnU-Net's checkpoint, written atomically; ``epochs_done`` defaults to the epoch being ended."""
        done = self.current_epoch + 1 if epochs_done is None else epochs_done
        self.pretrain_network.pretraining_record.copy_(self.pretraining_record(done).to_tensor())
        epoch, self.current_epoch = self.current_epoch, done - 1  # nnU-Net records current_epoch + 1
        try:
            super().save_checkpoint(filename)
        finally:
            self.current_epoch = epoch

    def checkpoint_extras(self) -> dict:
        cm = self.configuration_manager
        return {"mask_generator_state": self.mask_generator.get_state(), "numpy_rng_state": np.random.get_state(),
                "torch_rng_state": torch.get_rng_state(), "skipped_steps": self.skipped_steps,
                "method": self.method, "alignment_weight": self.alignment_weight,
                "alignment_predictor": self.alignment_predictor, "alignment_batch_norm": self.alignment_batch_norm,
                "effective_batch": self.recipe.effective_batch,
                "accumulation_steps": self.recipe.accumulation_steps, "lr": self.recipe.lr,
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
            if self.is_ddp:
                # the checkpoint holds rank 0's generators: every rank restores them, then draws its own
                # crops and masks from a seed they give (the same on every rank), plus its rank
                base = int(np.random.randint(2 ** 31 - 1 - dist.get_world_size()))
                seed_generators(base, dist.get_rank())
                self.mask_generator.manual_seed(base * 1000 + dist.get_rank())
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
        """progress.png: train and validation losses, the learning rate and, with alignment, the
        collapse monitor against its threshold; the recipe in the title."""
        get = lambda key: self.logger.get_value(key, None)  # noqa: E731
        epochs = range(len(get("val_losses")))
        losses = [name for name in self.loss_terms if name not in COLLAPSE_THRESHOLDS]
        fig, axes = plt.subplots(1, 3, figsize=(17, 4))
        for split, ax in zip(["train", "val"], axes):
            ax.plot(epochs, get(f"{split}_losses")[:len(epochs)], "k-", lw=2, label="total")
            for name in losses:
                ax.plot(epochs, get(f"{split}_{name}")[:len(epochs)], label=name)
            ax.set_title(f"{self.method} pre-training: {split} losses")
            ax.set_xlabel("epoch")
            ax.legend()
        axes[2].plot(epochs, get("lrs")[:len(epochs)], "b-", label="learning rate")
        axes[2].set_xlabel("epoch")
        axes[2].set_ylabel("learning rate", color="b")
        if "feature_std" in self.loss_terms:
            spread = axes[2].twinx()
            for name, color in zip(COLLAPSE_THRESHOLDS, ("r", "m")):
                spread.plot(epochs, get(f"train_{name}")[:len(epochs)], f"{color}-", label=f"{name} (train)")
                spread.axhline(COLLAPSE_THRESHOLDS[name], color=color, ls=":", label=f"{name} collapse threshold")
            spread.set_ylabel("spread over the batch")
            spread.set_ylim(bottom=0)
            spread.legend(loc="upper right")
        axes[2].set_title("learning rate and alignment spread")
        fig.suptitle(f"{self.method} pre-training recipe: {self.recipe.describe()}", fontsize=10)
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


class nnUNetTrainerMiMPretrainNoAlign(nnUNetTrainerMiMPretrain):
    """Ablation: MiM's three levels without the cross-level alignment loss."""
    alignment_weight = 0.0
