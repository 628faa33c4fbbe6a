"""MiM and MAE on nnU-Net's residual-encoder U-Net: the network of the user's own ResEnc plan (nnU-Net's
``nnUNetResEncUNet{M,L,XL}Plans``), pre-trained as a CNN.

A CNN cannot drop tokens, so the hidden regions are zeroed in the input, as nnssl's MAE does: no voxel of a hidden
region reaches the network, whatever the receptive field. The U-Net reconstructs the whole volume itself, its
segmentation heads giving one output channel per input channel; the loss is the same per-token normalised error
on the hidden tokens as the hybrid network's (losses.py), on the 16^3 token grid the levels are cut on. MiM's
alignment pools encoder features over each token's region: the deepest stage whose stride is at most the token
size, averaged onto the token grid.

Its state dict is the fine-tuning network's (the plan's ``ResidualEncoderUNet``, same keys) plus the alignment
heads and the pretraining record: stock ``nnUNetv2_train ... -p <the same plans> -pretrained_weights`` loads every
tensor but the segmentation heads, decoder included, as it does for nnssl's MAE checkpoints.
"""
from copy import deepcopy
from typing import Optional

import torch
import torch.nn.functional as F
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

from nnunet_mim.geometry import TOKEN_SIZE
from nnunet_mim.losses import patchify
from nnunet_mim.masking import LevelConfig
from nnunet_mim.plans import planned_patch_size, round_patch_size
from nnunet_mim.pretraining.model import AlignmentHeads, not_a_segmentation_network
from nnunet_mim.pretraining_record import RECORD_LENGTH

RESENC_CLASS = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
RESENC_PRETRAIN_CLASS = "nnunet_mim.backbones.resenc.ResEncPretrainNetwork"
# the stem's input convolution under both of dynamic-network-architectures' names (its keys_to_in_proj)
RESENC_IN_PROJECTIONS = ("encoder.stem.convs.0.conv", "encoder.stem.convs.0.all_modules.0")


def feature_stage(strides) -> int:
    """The deepest encoder stage whose total stride is at most TOKEN_SIZE on every axis."""
    total, deepest = [1, 1, 1], 0
    for stage, stride in enumerate(strides):
        stride = [stride] * 3 if isinstance(stride, int) else list(stride)
        total = [t * s for t, s in zip(total, stride)]
        if all(t <= TOKEN_SIZE for t in total):
            deepest = stage
    return deepest


class ResEncPretrainNetwork(ResidualEncoderUNet):
    def __init__(self, input_channels: int, num_classes: int, projector_dim: int = 256, alignment_pairs: int = 2,
                 alignment_predictor: bool = True, alignment_batch_norm: bool = True, **unet_kwargs):
        unet_kwargs.pop("deep_supervision", None)  # one full-resolution reconstruction
        super().__init__(input_channels, num_classes=input_channels, deep_supervision=False, **unet_kwargs)
        self.feature_stage = feature_stage(unet_kwargs["strides"])
        width = self.encoder.output_channels[self.feature_stage]
        self.alignment = AlignmentHeads(width, projector_dim, alignment_pairs, alignment_predictor,
                                        alignment_batch_norm) if alignment_pairs else None
        # all zeros until a pre-training trainer writes its record (see pretraining_record.py)
        self.register_buffer("pretraining_record", torch.zeros(RECORD_LENGTH, dtype=torch.float64))

    def forward(self, x: torch.Tensor, hidden: Optional[torch.Tensor] = None):
        """The masked forward, ``hidden`` (N, *grid) bool on the 16^3 token grid: (voxel prediction (N, T, C*16^3),
        token features (N, T, d)), as the hybrid network's."""
        if hidden is None:
            raise not_a_segmentation_network(
                "with nnU-Net's own trainer on the same ResEnc plans: nnUNetv2_train DATASET CONFIGURATION FOLD -p "
                "<those plans> -tr nnUNetTrainerStockCNN -pretrained_weights .../checkpoint_final.pth")
        visible = (~hidden)[:, None].to(x.dtype)
        for axis in (2, 3, 4):
            visible = visible.repeat_interleave(TOKEN_SIZE, dim=axis)
        skips = self.encoder(x * visible)
        reconstruction = self.decoder(skips)
        features = F.adaptive_avg_pool3d(skips[self.feature_stage], hidden.shape[1:])
        return patchify(reconstruction, TOKEN_SIZE), features.flatten(2).transpose(1, 2)


class ResEncBackbone:
    """Mixed into a pre-training trainer: its network is the plan's own residual-encoder U-Net
    (``ResEncPretrainNetwork``), not the hybrid; the plan's patch is rounded down to the levels' multiple."""
    description = "the plan's residual-encoder U-Net (-p nnUNetResEncUNet{{M,L}}Plans)"
    network_preset = "ResEnc"  # recorded in the checkpoint (pretraining_record.py)
    memory_predicted = False  # pretraining/memory.py models the hybrid only: the plan's batch runs as planned

    @staticmethod
    def backbone_levels(levels: LevelConfig) -> LevelConfig:
        """The method's levels as they are: a CNN has no tokens, the 16^3 grid is where masks and losses live."""
        return levels

    @classmethod
    def pretraining_plans(cls, plans: dict, configuration: str) -> dict:
        patch = planned_patch_size(plans, configuration)  # says which configurations there are
        plans = deepcopy(plans)
        config = plans["configurations"][configuration]
        network = config.get("architecture", {}).get("network_class_name", "")
        if not network.endswith("ResidualEncoderUNet"):
            raise RuntimeError(
                f"{cls.__name__} pre-trains the network of a residual-encoder plan, and these plans build "
                f"{network or 'another network'}: plan one (nnUNetv2_plan_experiment -d DATASET -pl "
                "nnUNetPlannerResEncM, or ...ResEncL) and train with -p nnUNetResEncUNetMPlans (or L)")
        config["patch_size"] = round_patch_size(patch, cls.levels.patch_multiple)
        config["architecture"] = dict(config["architecture"], network_class_name=RESENC_PRETRAIN_CLASS,
                                      arch_kwargs={**config["architecture"]["arch_kwargs"], **cls.alignment_kwargs()})
        return plans
