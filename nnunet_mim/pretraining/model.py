"""The pre-training network: ``MiMHybridUNet`` plus a light MAE-style reconstruction path.

It subclasses the segmentation network, so its state dict is a superset of the fine-tuning
network's: nnU-Net's stock ``-pretrained_weights`` finds every key it needs and ignores the
pre-training heads (``reconstruction.*``, ``projector.*``).

Data path of one masked forward (the order of the methods below):
  encoder.tokens(volumes, visible)   visible tokens only (hidden ones are dropped)
  -> scatter into the full grid, mask token at hidden positions
  -> a few transformer blocks (token decoder) -> per-token voxel prediction
The U-Net decoder is not used during pre-training: reconstructing at token level keeps the
21-volume MiM step affordable (see docs/method.md); the U-Net decoder weights are saved as
initialised and fine-tuning trains them from there.
"""
from typing import Optional, Tuple

import torch
from timm.layers import RotaryEmbeddingCat, trunc_normal_
from timm.models.eva import EvaBlock
from torch import nn

from nnunet_mim.architecture.encoder import TOKEN_SIZE, EncodedTokens
from nnunet_mim.architecture.network import MiMHybridUNet


class TokenDecoder(nn.Module):
    """MAE-style decoder: fills hidden positions with a mask token and predicts voxels per token."""

    def __init__(self, encoder_dim: int, dim: int, depth: int, out_features: int, head_dim: int = 48):
        super().__init__()
        self.embed = nn.Linear(encoder_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.rope = RotaryEmbeddingCat((2 * head_dim) // 3, in_pixels=False, feat_shape=None)
        self.blocks = nn.ModuleList([
            EvaBlock(dim=dim, num_heads=dim // head_dim, mlp_ratio=4 * 2 / 3, swiglu_mlp=True, scale_mlp=True,
                     num_prefix_tokens=0) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, out_features)
        trunc_normal_(self.mask_token, std=0.02)

    def forward(self, encoded: EncodedTokens) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (voxel prediction (N, T, out), token features (N, T, dim)) for the full grid."""
        x = self.embed(encoded.tokens)
        grid = encoded.grid
        n, num_tokens = x.shape[0], int(torch.tensor(grid).prod())
        mask_token = self.mask_token.to(x.dtype)
        # padding entries point at distinct hidden positions: they write the mask token there
        x = torch.where(encoded.valid[..., None], x, mask_token)
        full = mask_token.expand(n, num_tokens, -1).clone()
        full = full.scatter(1, encoded.keep_indices[..., None].expand(-1, -1, x.shape[-1]), x)
        rope = self.rope.get_embed(shape=grid).to(x.dtype)
        for block in self.blocks:
            full = block(full, rope=rope)
        features = self.norm(full)
        return self.head(features), features


class MiMPretrainNetwork(MiMHybridUNet):
    def __init__(self, input_channels: int, num_classes: int, decoder_dim: int = 0, decoder_depth: int = 2,
                 projector_dim: int = 256, **network_kwargs):
        super().__init__(input_channels, num_classes, **network_kwargs)
        encoder_dim = self.encoder.embed_dim
        decoder_dim = decoder_dim or min(encoder_dim, 192)
        self.reconstruction = TokenDecoder(encoder_dim, decoder_dim, decoder_depth,
                                           input_channels * TOKEN_SIZE ** 3)
        self.projector = nn.Sequential(nn.Linear(decoder_dim, projector_dim), nn.GELU(),
                                       nn.Linear(projector_dim, projector_dim))

    def forward(self, x: torch.Tensor, hidden: Optional[torch.Tensor] = None):
        """Without a mask: the segmentation forward. With ``hidden`` (N, *grid) bool: the masked
        forward, returning (voxel prediction (N, T, C*16^3), token features (N, T, d))."""
        if hidden is None:
            return super().forward(x)
        return self.reconstruction(self.encoder.tokens(x, visible=~hidden))

    def project(self, pooled_features: torch.Tensor) -> torch.Tensor:
        return self.projector(pooled_features)
