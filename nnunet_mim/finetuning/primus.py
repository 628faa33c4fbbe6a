"""``nnUNetTrainerPrimusFinetune``: Primus in nnU-Net's pipeline, fine-tuned from a Primus pre-training (this
project's, ``nnUNetTrainer{MiM,MAE}Pretrain_Primus``, or an nnssl file such as OpenMind's Primus-M MAE).

nnU-Net 2.8.1's ``nnUNet_Primus_M_Trainer`` (AdamW, warm-up, gradient clipping; its network, same keys), with:
  build_network_architecture  a class method in nnU-Net's new-style signature, so that ``nnUNetv2_predict``
                              rebuilds the network of this trainer's size from the saved plan (nnU-Net master's
                              own pretrained trainers cannot be rebuilt by its predictor)
  __init__                    the plan's patch rounded down to whole 8^3 tokens (Primus refuses others); lr
                              1e-4, nnU-Net master's for a pre-trained Primus (``PretrainedTrainer_Primus``)
Found through this plugin, its ``-pretrained_weights`` is read safely, the encoder and stem loaded, the
position table resized to this patch and Primus's decoder kept as initialised (pretrained_loading.py); a spacing or
normalisation other than the pre-training's is warned of (plan_match.py).
Without ``-pretrained_weights`` it is the matched from-scratch run (nnU-Net's own Primus trainer uses 3e-4).
"""
from copy import deepcopy

import torch
from nnunetv2.training.nnUNetTrainer.primus.primus_trainers import AbstractPrimus
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

from nnunet_mim import pretrained_loading
from nnunet_mim.finetuning.plan_match import PlanMatchCheck
from nnunet_mim.backbones.primus import PRIMUS_TOKEN_SIZE, primus_network
from nnunet_mim.plans import planned_patch_size, round_patch_size
from nnunet_mim.run_length import RunLengthFromClassAttributes

pretrained_loading.install()  # -pretrained_weights read once, without running code (pretrained_loading.py)


class nnUNetTrainerPrimusFinetune(PlanMatchCheck, RunLengthFromClassAttributes, AbstractPrimus):
    # its own names, not the hybrid's encoder_preset and peak_lr, which the CPU budgets set for the tiny hybrid: a
    # budget mixed in here sets the run's length only
    primus_size = "M"  # a size of backbones/primus.PRIMUS_SIZES
    primus_lr = 1e-4

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        plans = deepcopy(plans)
        patch = planned_patch_size(plans, configuration)
        plans["configurations"][configuration]["patch_size"] = round_patch_size(patch, PRIMUS_TOKEN_SIZE)
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.initial_lr = self.primus_lr

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> torch.nn.Module:
        return primus_network(num_input_channels, num_output_channels, cls.primus_size,
                              configuration_manager.patch_size)
