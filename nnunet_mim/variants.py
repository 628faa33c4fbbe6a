"""Trainer variants, named the nnU-Net way: ``<Trainer>_<preset>_<length>``.

``_T_CPUdemo`` and ``_T_CPUsmoke`` use the tiny preset and run on a laptop CPU (the built-in demo
and the end-to-end tests); they show that the pipeline works, not what the method can do.
"""
import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mim.finetuning.trainer import nnUNetTrainerMiMFinetune, nnUNetTrainerMiMScratch
from nnunet_mim.pretraining.trainer import nnUNetTrainerMAEPretrain, nnUNetTrainerMiMPretrain


class nnUNetTrainerMiMPretrainNoAlign(nnUNetTrainerMiMPretrain):
    """Ablation: MiM's three levels without the cross-level alignment loss."""
    alignment_weight = 0.0


# ---- pre-training ----------------------------------------------------------------------------
class nnUNetTrainerMiMPretrain_100ep(nnUNetTrainerMiMPretrain):
    epochs, warmup_epochs = 100, 10


class nnUNetTrainerMiMPretrain_S(nnUNetTrainerMiMPretrain):
    encoder_preset = "S"


class nnUNetTrainerMAEPretrain_100ep(nnUNetTrainerMAEPretrain):
    epochs, warmup_epochs = 100, 10


class nnUNetTrainerMAEPretrain_S(nnUNetTrainerMAEPretrain):
    encoder_preset = "S"


# The paper's lr (1e-4 per 256 samples) assumes batches of hundreds; at the CPU batch of 2 it
# would be ~1e-6 and nothing would move in a few hundred steps, so the CPU variants use 1e-3.
CPU_BASE_LR = 1e-3 * 256 / 2


class nnUNetTrainerMiMPretrain_T_CPUdemo(nnUNetTrainerMiMPretrain):
    encoder_preset, epochs, warmup_epochs, iterations_per_epoch, val_iterations_per_epoch = "T", 8, 1, 25, 2
    base_lr = CPU_BASE_LR


class nnUNetTrainerMAEPretrain_T_CPUdemo(nnUNetTrainerMAEPretrain):
    encoder_preset, epochs, warmup_epochs, iterations_per_epoch, val_iterations_per_epoch = "T", 8, 1, 25, 2
    base_lr = CPU_BASE_LR


class nnUNetTrainerMiMPretrainNoAlign_100ep(nnUNetTrainerMiMPretrainNoAlign):
    epochs, warmup_epochs = 100, 10


class nnUNetTrainerMiMPretrainNoAlign_T_CPUdemo(nnUNetTrainerMiMPretrainNoAlign):
    encoder_preset, epochs, warmup_epochs, iterations_per_epoch, val_iterations_per_epoch = "T", 8, 1, 25, 2
    base_lr = CPU_BASE_LR


class nnUNetTrainerMiMPretrainNoAlign_T_CPUsmoke(nnUNetTrainerMiMPretrainNoAlign):
    encoder_preset, epochs, warmup_epochs, iterations_per_epoch, val_iterations_per_epoch = "T", 2, 1, 2, 1
    base_lr = CPU_BASE_LR


class nnUNetTrainerMiMPretrain_T_CPUsmoke(nnUNetTrainerMiMPretrain):
    encoder_preset, epochs, warmup_epochs, iterations_per_epoch, val_iterations_per_epoch = "T", 2, 1, 2, 1
    base_lr = CPU_BASE_LR


class nnUNetTrainerMAEPretrain_T_CPUsmoke(nnUNetTrainerMAEPretrain):
    encoder_preset, epochs, warmup_epochs, iterations_per_epoch, val_iterations_per_epoch = "T", 2, 1, 2, 1
    base_lr = CPU_BASE_LR


# ---- fine-tuning and its matched scratch baseline ----------------------------------------------
class nnUNetTrainerMiMFinetune_100ep(nnUNetTrainerMiMFinetune):
    epochs = 100


class nnUNetTrainerMiMFinetune_250ep(nnUNetTrainerMiMFinetune):
    epochs = 250


class nnUNetTrainerMiMFinetune_S(nnUNetTrainerMiMFinetune):
    encoder_preset = "S"


class nnUNetTrainerMiMScratch_100ep(nnUNetTrainerMiMScratch):
    epochs = 100


class nnUNetTrainerMiMScratch_250ep(nnUNetTrainerMiMScratch):
    epochs = 250


class nnUNetTrainerMiMScratch_S(nnUNetTrainerMiMScratch):
    encoder_preset = "S"


class nnUNetTrainerMiMFinetune_T_CPUdemo(nnUNetTrainerMiMFinetune):
    encoder_preset, epochs, iterations_per_epoch, val_iterations_per_epoch = "T", 10, 20, 2
    test_time_mirroring = False


class nnUNetTrainerMiMScratch_T_CPUdemo(nnUNetTrainerMiMScratch):
    encoder_preset, epochs, iterations_per_epoch, val_iterations_per_epoch = "T", 10, 20, 2
    test_time_mirroring = False


class nnUNetTrainerMiMFinetune_T_CPUsmoke(nnUNetTrainerMiMFinetune):
    encoder_preset, epochs, iterations_per_epoch, val_iterations_per_epoch = "T", 1, 2, 1
    test_time_mirroring = False


class nnUNetTrainerMiMScratch_T_CPUsmoke(nnUNetTrainerMiMScratch):
    encoder_preset, epochs, iterations_per_epoch, val_iterations_per_epoch = "T", 1, 2, 1
    test_time_mirroring = False


# ---- stock nnU-Net CNN at the CPU budgets (the reference arm of the benchmark) -----------------------
class nnUNetTrainerStockCNN_CPUdemo(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 10, 20, 2

    def configure_rotation_dummyDA_mirroring_and_inital_patch_size(self):
        out = super().configure_rotation_dummyDA_mirroring_and_inital_patch_size()
        self.inference_allowed_mirroring_axes = None  # as the CPU variants above
        return out


class nnUNetTrainerStockCNN_CPUsmoke(nnUNetTrainerStockCNN_CPUdemo):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs, self.num_iterations_per_epoch, self.num_val_iterations_per_epoch = 1, 2, 1
