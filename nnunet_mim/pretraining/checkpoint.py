"""What a pre-training checkpoint holds beyond nnU-Net's, and what ``--c`` restores from it: the pretraining
record in the weights (what fine-tuning checks, pretraining_record.py), the generators of crops and masks (a
continued run draws what the uninterrupted one would have), the recipe, the plan and the method's settings
(what adapt-checkpoint, the benchmark and the load report read)."""
from dataclasses import asdict
from typing import Optional

import numpy as np
import torch
from torch import distributed as dist

from nnunet_mim.checkpointing import AtomicCheckpointMixin
from nnunet_mim.pretraining_record import PretrainingRecord
from nnunet_mim.seeding import seed_generators


class PretrainingCheckpointMixin(AtomicCheckpointMixin):
    """``network_preset``, what the record names as the pre-trained network, is the backbone's (backbones/)."""

    def pretraining_record(self, epochs_done: int) -> PretrainingRecord:
        return PretrainingRecord(method=self.method, preset=self.network_preset, decoder_pretrained=False,
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
                "encoder_preset": self.network_preset, "token_size": self.levels.token_size,
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
