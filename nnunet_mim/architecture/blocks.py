"""Building blocks of the ConvMAE-style encoder.

Every block normalises over channels only (``ChannelLayerNorm``), never over space: a spatial norm
(instance or batch norm) would let hidden voxels shift the statistics of visible ones and break
the masking invariant.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from dynamic_network_architectures.building_blocks.patch_encode_decode import LayerNormNd
from timm.layers import DropPath
from torch import nn
from torch.utils.checkpoint import checkpoint


class ChannelLayerNorm(LayerNormNd):
    """dynamic-network-architectures' ``LayerNormNd`` (the same parameters and numbers), computed by one
    ``F.layer_norm`` over the channel axis: autograd then keeps the input and two statistics per voxel
    instead of four full-size intermediates, a third of what a conv block saves for the backward
    (measured in docs/experiments/48-pre-training-memory.md). In float32 whatever the input, as CUDA's
    autocast runs ``layer_norm``; so the bytes measured under the CPU's autocast are the GPU's too."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.movedim(1, -1).float(), (x.shape[1],), self.weight, self.bias,
                            self.eps).movedim(-1, 1)


class Downsample(nn.Sequential):
    """Stride-2 convolution with kernel 2, channel norm, GELU.

    Kernel == stride, so each output voxel sees exactly one 2x2x2 input cell: a token-aligned
    mask stays exact through every downsampling.
    """

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv3d(in_channels, out_channels, kernel_size=2, stride=2),
            ChannelLayerNorm(out_channels),
            nn.GELU(),
        )


class MaskedConvBlock(nn.Module):
    """ConvMAE conv block: ``x + pw(dw5(visible * pw(norm(x))))`` then ``x + mlp(norm(x))``.

    The depthwise kernel is 5 (ConvMAE) by default; the tiny CPU preset uses 3, because grouped
    5x5x5 convolutions are about 7x slower than 3x3x3 ones on the CPU.

    The visibility mask gates the only spatial operation (the depthwise 5x5x5 convolution), so
    features at visible positions never receive anything from hidden positions.
    """

    def __init__(self, channels: int, mlp_ratio: float = 4.0, drop_path: float = 0.0, dw_kernel_size: int = 5):
        super().__init__()
        self.norm1 = ChannelLayerNorm(channels)
        self.pw_in = nn.Conv3d(channels, channels, 1)
        self.dw = nn.Conv3d(channels, channels, dw_kernel_size, padding=dw_kernel_size // 2, groups=channels)
        self.pw_out = nn.Conv3d(channels, channels, 1)
        self.norm2 = ChannelLayerNorm(channels)
        hidden = int(channels * mlp_ratio)
        self.mlp = nn.Sequential(nn.Conv3d(channels, hidden, 1), nn.GELU(), nn.Conv3d(hidden, channels, 1))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, visible: Optional[torch.Tensor] = None) -> torch.Tensor:
        y = self.pw_in(self.norm1(x))
        if visible is not None:
            y = y * visible
        x = x + self.drop_path(self.pw_out(self.dw(y)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ConvStage(nn.Module):
    """Downsample by 2, then ``depth`` masked conv blocks. With ``checkpoint_blocks`` each block keeps only
    its input for the backward and runs again there (the pre-training trainers turn it on only where a step
    does not fit the device otherwise: pretraining/memory.py)."""

    def __init__(self, in_channels: int, out_channels: int, depth: int, mlp_ratio: float = 4.0,
                 drop_path: float = 0.0, dw_kernel_size: int = 5):
        super().__init__()
        self.downsample = Downsample(in_channels, out_channels)
        self.blocks = nn.ModuleList([MaskedConvBlock(out_channels, mlp_ratio, drop_path, dw_kernel_size)
                                     for _ in range(depth)])
        self.checkpoint_blocks = False

    def forward(self, x: torch.Tensor, visible: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            if self.checkpoint_blocks and torch.is_grad_enabled():
                x = checkpoint(block, x, visible, use_reentrant=False)
            else:
                x = block(x, visible)
        return x
