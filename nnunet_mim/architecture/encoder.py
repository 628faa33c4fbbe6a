"""The ConvMAE-style 3D hybrid encoder: three masked conv stages, a transformer on 16^3 tokens.

Input (B, C, Z, Y, X), every axis a multiple of ``TOKEN_SIZE``.

    stem       conv 3x3x3 at full resolution             (segmentation path only, U-Net skip)
    stage 1-3  Downsample + MaskedConvBlocks             1/2, 1/4, 1/8
    tokens     conv k2 s2 on stage 3 -> 1/16 grid, flattened to a token sequence
    blocks     Eva transformer blocks with 3D rotary position embedding (no learned position table,
               so no parameter shape depends on the patch size)
    fusion     stage 1-3 outputs projected onto the token grid (kernel == stride) and added
    norm       LayerNorm of the sum (ConvMAE's order)

A ``visible`` mask on the token grid (True = visible) makes the forward masked: the conv stages
gate their depthwise convolutions with it and the transformer only receives the visible tokens
(MAE-style), so nothing from a hidden region reaches a visible token.
"""
from typing import List, NamedTuple, Optional, Sequence, Tuple

import torch
from timm.layers import RotaryEmbeddingCat
from timm.models.eva import EvaBlock
from torch import nn

from nnunet_mim.architecture.blocks import ConvStage
from nnunet_mim.geometry import STRIDES, TOKEN_SIZE



class EncodedTokens(NamedTuple):
    tokens: torch.Tensor                   # (B, N, D) unmasked; (B, K, D) masked, K = most visible tokens
    conv_features: List[torch.Tensor]      # stage 1-3 outputs
    grid: Tuple[int, int, int]             # token grid
    keep_indices: Optional[torch.Tensor]   # (B, K) grid index of each token (masked forward only)
    valid: Optional[torch.Tensor]          # (B, K) False where a sample with fewer visible tokens is padded


def gather_tokens(tokens: torch.Tensor, keep_indices: torch.Tensor) -> torch.Tensor:
    """(B, N, D) tokens, (B, K) indices -> (B, K, D)."""
    return tokens.gather(1, keep_indices[..., None].expand(-1, -1, tokens.shape[-1]))


def visible_token_indices(visible: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """(keep_indices, valid), both (B, K): each sample's visible tokens first, in raster order of its grid, then
    padding up to the largest count K (samples of a masked batch may show different numbers of tokens: MiM's
    levels do). Padding entries point at distinct hidden tokens; ``valid`` is False there."""
    flat = visible.flatten(1)
    counts = flat.sum(1)
    most = int(counts.max())
    # a stable sort puts each sample's visible tokens first, in raster order
    keep_indices = torch.argsort((~flat).to(torch.int8), dim=1, stable=True)[:, :most]
    return keep_indices, torch.arange(most, device=visible.device)[None] < counts[:, None]


def padding_attention_mask(valid: torch.Tensor, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """The additive attention mask that excludes padding as a key, (B, 1, 1, K); None when nothing is padded."""
    if bool(valid.all()):
        return None
    mask = torch.zeros(valid.shape, dtype=dtype, device=valid.device)
    return mask.masked_fill(~valid, torch.finfo(dtype).min)[:, None, None, :]


class HybridEncoder(nn.Module):
    def __init__(self, input_channels: int, stem_channels: int = 32,
                 conv_channels: Sequence[int] = (48, 96, 192), conv_depths: Sequence[int] = (2, 2, 2),
                 embed_dim: int = 384, depth: int = 11, num_heads: int = 8, mlp_ratio: float = 4.0,
                 drop_path_rate: float = 0.0, dw_kernel_size: int = 5):
        super().__init__()
        head_dim = embed_dim // num_heads
        # timm's 3D RotaryEmbeddingCat returns 3 * dim features; EvaAttention wants 2 * head_dim.
        if head_dim * num_heads != embed_dim or (2 * head_dim) % 3 or ((2 * head_dim) // 3) % 4:
            raise ValueError(f"embed_dim {embed_dim} / num_heads {num_heads} gives head_dim {head_dim}; "
                             "3D rotary embeddings need a head_dim divisible by 6 with 2*head_dim/3 "
                             "divisible by 4 (e.g. 48 or 96)")
        self.embed_dim = embed_dim
        self.stem = nn.Sequential(
            nn.Conv3d(input_channels, stem_channels, 3, padding=1),
            nn.InstanceNorm3d(stem_channels, affine=True),
            nn.LeakyReLU(inplace=True),
        )
        widths = [input_channels, *conv_channels]
        self.stages = nn.ModuleList(
            [ConvStage(widths[i], widths[i + 1], conv_depths[i], mlp_ratio, drop_path_rate, dw_kernel_size)
             for i in range(3)])
        self.patch_embed = nn.Conv3d(conv_channels[-1], embed_dim, kernel_size=2, stride=2)
        self.rope = RotaryEmbeddingCat((2 * head_dim) // 3, in_pixels=False, feat_shape=None)
        drop_rates = torch.linspace(0, drop_path_rate, depth).tolist()
        self.blocks = nn.ModuleList([
            EvaBlock(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio * 2 / 3, swiglu_mlp=True,
                     scale_mlp=True, drop_path=rate, num_prefix_tokens=0)
            for rate in drop_rates])
        self.norm = nn.LayerNorm(embed_dim)
        self.fusion = nn.ModuleList([
            nn.Conv3d(c, embed_dim, kernel_size=TOKEN_SIZE // 2 ** (i + 1), stride=TOKEN_SIZE // 2 ** (i + 1))
            for i, c in enumerate(conv_channels)])

        # What nnU-Net's UNetDecoder reads from the encoder it decodes.
        self.output_channels = [stem_channels, *conv_channels, embed_dim]
        self.strides = STRIDES
        self.kernel_sizes = [[3, 3, 3]] * 5
        self.conv_op = nn.Conv3d
        self.dropout_op = None  # read by UNetDecoder even when its own dropout_op is None
        self.dropout_op_kwargs = None

    @staticmethod
    def _visible_at(visible: Optional[torch.Tensor], factor: int) -> Optional[torch.Tensor]:
        """Token-grid mask (B, gz, gy, gx) -> (B, 1, ...) mask at a resolution ``factor`` x finer."""
        if visible is None:
            return None
        v = visible[:, None].float()
        for axis in (2, 3, 4):
            v = v.repeat_interleave(factor, dim=axis)
        return v

    def conv_features(self, x: torch.Tensor, visible: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
        features = []
        for i, stage in enumerate(self.stages):
            x = stage(x, self._visible_at(visible, TOKEN_SIZE // 2 ** (i + 1)))
            features.append(x)
        return features

    def tokens(self, x: torch.Tensor, visible: Optional[torch.Tensor] = None) -> EncodedTokens:
        """Encode to tokens; with ``visible`` (B, *grid) bool, only the visible tokens.

        Samples of a masked batch may show different numbers of tokens: each is padded to the largest
        count and the padding is excluded from attention as a key (``visible_token_indices``).
        """
        conv = self.conv_features(x, visible)
        grid = tuple(s // TOKEN_SIZE for s in x.shape[2:])
        tokens = self.patch_embed(conv[-1]).flatten(2).transpose(1, 2)
        fused = sum(f(c).flatten(2).transpose(1, 2) for f, c in zip(self.fusion, conv))
        rope = self.rope.get_embed(shape=grid).to(tokens.dtype)
        keep_indices = valid = attn_mask = None
        if visible is not None:
            keep_indices, valid = visible_token_indices(visible)
            tokens = gather_tokens(tokens, keep_indices)
            fused = gather_tokens(fused, keep_indices)
            rope = rope[keep_indices][:, None]  # (B, 1, K, E): one embedding per sample, shared by heads
            attn_mask = padding_attention_mask(valid, tokens.dtype)
        for block in self.blocks:
            tokens = block(tokens, rope=rope, attn_mask=attn_mask)
        # ConvMAE adds the multi-scale fusion before the encoder's final norm
        return EncodedTokens(self.norm(tokens + fused), conv, grid, keep_indices, valid)

    def forward(self, x: torch.Tensor) -> List[torch.Tensor]:
        """Unmasked forward: the five U-Net skips, full resolution first."""
        encoded = self.tokens(x)
        token_map = encoded.tokens.transpose(1, 2).reshape(x.shape[0], self.embed_dim, *encoded.grid)
        return [self.stem(x), *encoded.conv_features, token_map]
