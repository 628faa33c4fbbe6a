"""One rank of a two-process pre-training run on the CPU (gloo), launched by torch.distributed.run from
test_ddp_pretraining.py. nnU-Net's own initialize() builds the network, the optimizer and the DDP
wrapper; only its device handling is replaced, because nnU-Net puts DDP ranks on cuda:RANK and hands
DDP a device id, which a CPU module refuses. Writes this rank's final weights and losses to OUT."""
import os
import sys

import torch
import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as nnunet_trainer_module

from nnunet_mim.variants import nnUNetTrainerMiMPretrain_T_CPUsmoke

OUT = sys.argv[1]


class nnUNetTrainerMiMPretrain_DDPCheck(nnUNetTrainerMiMPretrain_T_CPUsmoke):
    """Three optimizer steps of two micro-steps each: no_sync on the first, the all-reduce on the second."""
    epochs, iterations_per_epoch, effective_batch = 1, 6, 4

    def on_train_start(self):
        super().on_train_start()  # initialize(): the network built and wrapped in DDP
        self.initial_weights = {k: v.detach().clone() for k, v in self.pretrain_network.state_dict().items()}


dist.init_process_group("gloo")
nnunet_trainer_module.DDP = lambda module, device_ids: torch.nn.parallel.DistributedDataParallel(module)
folder = os.path.join(nnUNet_preprocessed, "Dataset991_E2E")
plans = dict(load_json(os.path.join(folder, "nnUNetPlans.json")), continue_training=False)  # as run_training sets it
trainer = nnUNetTrainerMiMPretrain_DDPCheck(plans, "3d_fullres", "all", load_json(os.path.join(folder, "dataset.json")),
                                            torch.device("cpu"))
trainer.device = torch.device("cpu")  # nnU-Net sets cuda:RANK for every DDP run
trainer.run_training()
weights = {k: v.detach().cpu() for k, v in trainer.pretrain_network.state_dict().items()}
moved = sorted(k for k, v in weights.items() if not torch.equal(v, trainer.initial_weights[k]))
torch.save({"weights": weights, "moved": moved, "losses": trainer.logger.get_value("train_losses", None),
            "micro_batch": trainer.batch_size, "accumulation": trainer.recipe.accumulation_steps,
            "optimizer_steps": trainer.optimizer_steps_per_epoch * trainer.num_epochs,
            "skipped": trainer.skipped_steps}, f"{OUT}/rank{dist.get_rank()}.pt")
dist.destroy_process_group()
