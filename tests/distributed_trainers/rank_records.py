"""Trainers of tests/test_distributed.py, found by nnU-Net through nnUNet_extTrainer: smoke-sized
trainers (ours and nnU-Net's own through nnUNetTrainerStockCNN) that write what each rank trained on and
ended with to the folder in NNUNET_MIM_TEST_RANK_RECORDS."""
import hashlib
import os

import numpy as np
import torch
import torch.distributed as dist

from nnunet_mim.architecture.network import unwrap_network
from nnunet_mim.variants import (nnUNetTrainerMiMFinetune_T_CPUsmoke, nnUNetTrainerMiMPretrain_T_CPUsmoke,
                                 nnUNetTrainerStockCNN_CPUsmoke)


def weights(network) -> dict:
    return {k: v.detach().cpu().clone() for k, v in unwrap_network(network).state_dict().items()}


class RankRecord:
    """Hashes of the batches this rank trained on; its weights when training started and ended."""

    def on_train_start(self):
        super().on_train_start()  # initialize(): the network built, DDP-wrapped, maybe loaded
        self.record = {"initial": weights(self.network), "batches": [], "micro_batch": self.batch_size,
                       "world_size": dist.get_world_size() if self.is_ddp else 1,
                       "device": str(self.device), "started_at_epoch": self.current_epoch}

    def train_step(self, batch: dict) -> dict:
        self.record["batches"].append(hashlib.sha1(np.ascontiguousarray(batch["data"]).tobytes()).hexdigest())
        return super().train_step(batch)

    def on_train_end(self):
        super().on_train_end()
        rank = dist.get_rank() if self.is_ddp else 0
        recipe = getattr(self, "recipe", None)  # pre-training's accumulation
        self.record.update(final=weights(self.network), train_losses=self.logger.get_value("train_losses", None),
                           skipped=getattr(self, "skipped_steps", None),
                           accumulation=recipe.accumulation_steps if recipe else None,
                           optimizer_steps=getattr(self, "optimizer_steps_per_epoch", 0) * self.num_epochs)
        torch.save(self.record, os.path.join(os.environ["NNUNET_MIM_TEST_RANK_RECORDS"],
                                             f"{type(self).__name__}_rank{rank}.pt"))


class nnUNetTrainerMiMPretrain_RankRecord(RankRecord, nnUNetTrainerMiMPretrain_T_CPUsmoke):
    """One epoch, three optimizer steps of two micro-steps (effective batch 4 from the plan's 2)."""
    epochs, iterations_per_epoch, effective_batch = 1, 6, 4


class nnUNetTrainerMiMFinetune_RankRecord(RankRecord, nnUNetTrainerMiMFinetune_T_CPUsmoke):
    pass


class nnUNetTrainerStockCNN_RankRecord(RankRecord, nnUNetTrainerStockCNN_CPUsmoke):
    """Long enough to be stopped part-way: three epochs of four steps."""
    epochs, iterations_per_epoch = 3, 4
