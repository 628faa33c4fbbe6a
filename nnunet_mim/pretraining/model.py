"""The pre-training network: ``MiMHybridUNet`` plus a light MAE-style reconstruction path.

It subclasses the segmentation network, so its state dict is a superset of the fine-tuning
network's: nnU-Net's stock ``-pretrained_weights`` finds every key it needs and ignores the
pre-training heads (``reconstruction.*``, ``alignment.*``).

Data path of one masked forward (the order of the methods below):
  encoder.tokens(volumes, visible)   visible tokens only (hidden ones are dropped)
  -> scatter into the full grid, mask token at hidden positions
  -> a few transformer blocks (token decoder) -> per-token voxel prediction
The U-Net decoder and the full-resolution stem are not used during pre-training: reconstructing
at token level keeps the 21-volume MiM step affordable (see docs/method.md). They are frozen
(``requires_grad`` False), so neither AdamW nor a DistributedDataParallel wrapper sees them (DDP
fails on parameters that get no gradient), and saved as initialised; fine-tuning trains them.

The alignment heads (MiM only) sit beside that path: ``AlignmentHeads`` projects the pooled token
features of a child volume and of its parent region, one set of heads per adjacent level pair.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from timm.layers import RotaryEmbeddingCat, trunc_normal_
from timm.models.eva import EvaBlock
from torch import nn

from nnunet_mim.architecture.encoder import EncodedTokens
from nnunet_mim.geometry import TOKEN_SIZE
from nnunet_mim.architecture.network import MiMHybridUNet, init_linear_weights


def not_a_segmentation_network(how_to_fine_tune: str) -> RuntimeError:
    """What a pre-training network (of any backbone) says when asked to segment: nnUNetv2_predict on a pre-training
    run's folder would otherwise write the segmentation of heads that never trained."""
    return RuntimeError("this is a pre-training network: it reconstructs masked volumes and segments nothing. "
                        f"Fine-tune it {how_to_fine_tune}")


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
        # built after the segmentation network ran its init: MAE / ConvMAE's init, here
        self.apply(init_linear_weights)
        trunc_normal_(self.mask_token, std=0.02)

    def forward(self, encoded: EncodedTokens) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (voxel prediction (N, T, out), token features (N, T, dim)) for the full grid."""
        x = self.embed(encoded.tokens)
        grid = encoded.grid
        n, num_tokens = x.shape[0], math.prod(grid)  # not a tensor: no graph break under torch.compile
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


class ProjectionMLP(nn.Module):
    """Linear-GELU-Linear (the authors' projector); with ``batch_norm``, the hidden layer is
    standardised over the batch first, as in BYOL's and SimSiam's MLPs. The standardisation is
    functional (batch statistics, no running ones, no affine): nothing for nnU-Net's DDP set-up to
    convert to SyncBatchNorm, which runs on GPUs only; each rank normalises over its own volumes."""

    def __init__(self, in_features: int, features: int, batch_norm: bool):
        super().__init__()
        self.hidden = nn.Linear(in_features, features)
        self.out = nn.Linear(features, features)
        self.batch_norm = batch_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.hidden(x)
        if self.batch_norm:
            h = F.batch_norm(h, None, None, training=True)
        return self.out(F.gelu(h))


class AlignmentHeads(nn.Module):
    """The cross-level alignment heads, one set per adjacent level pair (L1-L2, L2-L3).

    The authors' form (``predictor=False``): a child projector MLP_s and a separate, trainable parent
    projector MLP_t fed stop-gradient parent features; the loss aligns ``MLP_s(child)`` with
    ``MLP_t(sg(parent))``. Both sides can then win the loss by mapping every volume to one vector.
    With ``predictor`` (BYOL's form): a predictor MLP maps the child projection onto the target, the
    target is a stop-gradient too, and the parent projector follows the child projector as an
    exponential moving average (``update_target``) instead of being trained. docs/method.md has the
    measurement that chose the default (BYOL's form with batch-normalised hidden layers)."""

    def __init__(self, features: int, projector_features: int, num_pairs: int, predictor: bool, batch_norm: bool):
        super().__init__()

        def heads(in_features: int) -> nn.ModuleList:
            return nn.ModuleList([ProjectionMLP(in_features, projector_features, batch_norm)
                                  for _ in range(num_pairs)])
        self.child, self.parent = heads(features), heads(features)
        self.predictor = heads(projector_features) if predictor else None
        self.apply(init_linear_weights)
        if predictor:  # BYOL's target network: starts as the online projector, never gets a gradient
            self.parent.load_state_dict(self.child.state_dict())
            self.parent.requires_grad_(False)

    def forward(self, pair: int, child_features: torch.Tensor, parent_features: torch.Tensor):
        """(child output, target) of one level pair, the two vectors the alignment loss compares."""
        child = self.child[pair](child_features)
        target = self.parent[pair](parent_features.detach())
        if self.predictor is None:
            return child, target
        return self.predictor[pair](child), target.detach()

    @torch.no_grad()
    def update_target(self, momentum: float) -> None:
        """After each optimizer step, in the predictor form: parent projector <- EMA of the child one, keeping
        ``momentum`` of itself (the trainer's ``alignment_target_momentum`` schedule)."""
        if self.predictor is not None:
            for target, online in zip(self.parent.parameters(), self.child.parameters()):
                target.lerp_(online, 1 - momentum)


class MiMPretrainNetwork(MiMHybridUNet):
    def __init__(self, input_channels: int, num_classes: int, decoder_dim: int = 0, decoder_depth: int = 2,
                 projector_dim: int = 256, alignment_pairs: int = 2, alignment_predictor: bool = True,
                 alignment_batch_norm: bool = True, **network_kwargs):
        super().__init__(input_channels, num_classes, **network_kwargs)
        encoder_dim = self.encoder.embed_dim
        decoder_dim = decoder_dim or min(encoder_dim, 192)
        self.reconstruction = TokenDecoder(encoder_dim, decoder_dim, decoder_depth,
                                           input_channels * TOKEN_SIZE ** 3)
        # MAE and the no-alignment ablation align nothing: no heads, so no parameter without a gradient
        self.alignment = AlignmentHeads(decoder_dim, projector_dim, alignment_pairs, alignment_predictor,
                                        alignment_batch_norm) if alignment_pairs else None
        # the masked forward never reaches these (see the module docstring)
        for part in (self.encoder.stem, self.decoder.stages, self.decoder.transpconvs, self.decoder.seg_layers):
            part.requires_grad_(False)  # not self.decoder: it holds a reference to the encoder

    def forward(self, x: torch.Tensor, hidden: Optional[torch.Tensor] = None):
        """The masked forward, ``hidden`` (N, *grid) bool: (voxel prediction (N, T, C*16^3), token features
        (N, T, d)). Without a mask it refuses: nnUNetv2_predict on a pre-training run's folder would
        otherwise write the segmentation of decoder and heads that never trained."""
        if hidden is None:
            raise not_a_segmentation_network(
                "first (nnUNetv2_train DATASET CONFIGURATION FOLD -tr nnUNetTrainerMiMFinetune, or its variant of the "
                "same preset, -pretrained_weights .../checkpoint_final.pth) and predict with that run's trainer")
        return self.reconstruction(self.encoder.tokens(x, visible=~hidden))
