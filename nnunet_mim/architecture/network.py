"""``MiMHybridUNet``: the hybrid encoder with nnU-Net's own U-Net decoder and deep supervision.

Built from a plans entry like any nnU-Net network::

    "architecture": {"network_class_name": "nnunet_mim.architecture.network.MiMHybridUNet",
                     "arch_kwargs": {"preset": "B", "stem_channels": 32, ...},
                     "_kw_requires_import": []}

No parameter shape depends on the patch size, so one state dict serves every patch size that is
a multiple of 16 per axis.
"""
from typing import Sequence

import torch
from dynamic_network_architectures.architectures.abstract_arch import AbstractDynamicNetworkArchitectures
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from timm.layers import trunc_normal_
from torch import nn

from nnunet_mim.architecture.encoder import HybridEncoder
from nnunet_mim.geometry import STRIDES, check_patch_size
from nnunet_mim.pretraining_record import RECORD_LENGTH, PretrainingRecord


def unwrap_network(network: nn.Module) -> nn.Module:
    """The network inside nnU-Net's DDP and torch.compile wrappers."""
    network = getattr(network, "module", network)  # DistributedDataParallel
    return getattr(network, "_orig_mod", network)  # torch.compile


def init_linear_weights(module: nn.Module) -> None:
    """Truncated normal (std 0.02) weights and zero biases for linear layers (MAE / ConvMAE practice)."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class MiMHybridUNet(AbstractDynamicNetworkArchitectures):
    def __init__(self, input_channels: int, num_classes: int, preset: str = "custom",
                 deep_supervision: bool = True, n_conv_per_stage_decoder: int = 2,
                 stem_channels: int = 32, conv_channels: Sequence[int] = (48, 96, 192),
                 conv_depths: Sequence[int] = (2, 2, 2), embed_dim: int = 384, depth: int = 11,
                 num_heads: int = 8, mlp_ratio: float = 4.0, drop_path_rate: float = 0.0, dw_kernel_size: int = 5,
                 strides: Sequence[Sequence[int]] = tuple(STRIDES)):
        super().__init__()
        # ``strides`` is in the plans only because nnU-Net reads its pooling (and deep-supervision
        # scales) from there; the architecture fixes it
        if [list(s) for s in strides] != STRIDES:
            raise ValueError(f"MiMHybridUNet has fixed strides {STRIDES}; the plans say {strides}")
        self.preset = preset
        self.input_channels = input_channels
        self.encoder = HybridEncoder(input_channels, stem_channels, conv_channels, conv_depths, embed_dim, depth,
                                     num_heads, mlp_ratio, drop_path_rate, dw_kernel_size)
        self.decoder = UNetDecoder(
            self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision,
            norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, dropout_op=None,
            dropout_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs={"inplace": True}, conv_bias=True)
        # all zeros until a pre-training trainer writes its record (see pretraining_record.py)
        self.register_buffer("pretraining_record", torch.zeros(RECORD_LENGTH, dtype=torch.float64))

        self.key_to_encoder = "encoder"
        self.key_to_stem = "encoder.stem"
        self.keys_to_in_proj = ("encoder.stem.0", "encoder.stages.0.downsample.0")

        # nnU-Net's He init for its decoder. The encoder keeps PyTorch's conv init, whose non-zero
        # biases matter: a zero-bias conv on constant input (padding, background) gives an
        # all-equal channel vector, and the channel LayerNorm of such a vector divides by
        # sqrt(eps) -> gradients of 1e20 in the first steps.
        for part in (self.decoder.stages, self.decoder.transpconvs, self.decoder.seg_layers):
            part.apply(InitWeights_He(1e-2))  # not self.decoder: it holds a reference to the encoder
        self.apply(init_linear_weights)

    def forward(self, x: torch.Tensor):
        check_patch_size(x.shape[2:])
        return self.decoder(self.encoder(x))

    def get_pretraining_record(self):
        return PretrainingRecord.from_tensor(self.pretraining_record)
