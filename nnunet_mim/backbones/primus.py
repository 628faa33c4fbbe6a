"""MiM and MAE on Primus (dynamic-network-architectures' ``Primus``: a convolution cuts the volume into 8^3 tokens,
an Eva transformer with a learned position table and 3D rotary embeddings encodes them, a transposed convolution
decodes them), the transformer nnU-Net's authors recommend, as nnU-Net 2.8.1's ``nnUNet_Primus_M_Trainer`` builds it.

Masking is this project's, not Primus's ``patch_drop_rate`` (random per token, and broken with timm 1.0.22): the
hidden tokens are dropped before the first block, so attention never sees them (the hybrid's bright-cube test holds
here too), with the same keep-indices and padding as the hybrid encoder. A light Eva decoder (the hybrid's
``TokenDecoder``) fills the hidden positions with a mask token and predicts each token's 8^3 voxels; its features
feed MiM's alignment heads. Primus's own ``up_projection`` never trains during pre-training (frozen): fine-tuning
starts it fresh, as nnU-Net master does.

Every level has the plan's patch as input (Primus ties its position table to one input size). With 8^3 tokens
MiM's regions are groups of tokens: L2 hides, and L3 magnifies, regions of 2^3 tokens, the 16^3 voxels the paper's
L2 hides and its L3 magnifies (masking.py, ``l3_region_tokens``).

Its state dict is the fine-tuning network's (``Primus`` at the same size and patch, same keys), the decoder and the
alignment heads and the pretraining record besides: ``nnUNetTrainerPrimusFinetune`` (of the same size) loads the
encoder from it and resizes the position table to its own patch.
"""
from copy import deepcopy
from dataclasses import replace
from typing import Optional, Sequence

import torch
from dynamic_network_architectures.architectures.primus import Primus

from nnunet_mim.architecture.encoder import (EncodedTokens, gather_tokens, padding_attention_mask,
                                             visible_token_indices)
from nnunet_mim.masking import LevelConfig
from nnunet_mim.plans import planned_patch_size, round_patch_size
from nnunet_mim.pretraining.model import AlignmentHeads, TokenDecoder, not_a_segmentation_network
from nnunet_mim.pretraining_record import RECORD_LENGTH

PRIMUS_TOKEN_SIZE = 8
PRIMUS_PRETRAIN_CLASS = "nnunet_mim.backbones.primus.PrimusPretrainNetwork"
PRIMUS_IN_PROJECTIONS = ("down_projection.proj",)  # Primus's keys_to_in_proj
# dynamic-network-architectures' Primus sizes (its PrimusS/B/M/L presets), and T, a tiny one for CPU tests
PRIMUS_SIZES = {"T": dict(embed_dim=96, eva_depth=2, eva_numheads=2),
                "S": dict(embed_dim=396, eva_depth=12, eva_numheads=6),
                "B": dict(embed_dim=792, eva_depth=12, eva_numheads=12),
                "M": dict(embed_dim=864, eva_depth=16, eva_numheads=12),
                "L": dict(embed_dim=1056, eva_depth=24, eva_numheads=16)}
# what the presets (and nnU-Net 2.8.1's Primus trainers) build besides the size
PRIMUS_SETTINGS = dict(init_values=0.1, scale_attn_inner=True)


def primus_network(input_channels: int, num_classes: int, size: str, patch_size: Sequence[int],
                   drop_path_rate: float = 0.2) -> Primus:
    """The segmentation network of a size at a patch, as nnU-Net 2.8.1's ``nnUNet_Primus_<size>_Trainer`` builds it
    (drop path 0.2 for fine-tuning)."""
    return Primus(input_channels, num_classes=num_classes, patch_embed_size=(PRIMUS_TOKEN_SIZE,) * 3,
                  input_shape=tuple(patch_size), drop_path_rate=drop_path_rate, **PRIMUS_SIZES[size],
                  **PRIMUS_SETTINGS)


class PrimusPretrainNetwork(Primus):
    def __init__(self, input_channels: int, num_classes: int, embed_dim: int, eva_depth: int, eva_numheads: int,
                 input_shape: Sequence[int], init_values: float = 0.1, scale_attn_inner: bool = True,
                 decoder_dim: int = 0, decoder_depth: int = 2, projector_dim: int = 256, alignment_pairs: int = 2,
                 alignment_predictor: bool = True, alignment_batch_norm: bool = True, deep_supervision=None):
        super().__init__(input_channels, embed_dim, (PRIMUS_TOKEN_SIZE,) * 3, num_classes, eva_depth, eva_numheads,
                         tuple(input_shape), init_values=init_values, scale_attn_inner=scale_attn_inner)
        decoder_dim = decoder_dim or min(embed_dim, 192)
        self.reconstruction = TokenDecoder(embed_dim, decoder_dim, decoder_depth,
                                           input_channels * PRIMUS_TOKEN_SIZE ** 3)
        self.alignment = AlignmentHeads(decoder_dim, projector_dim, alignment_pairs, alignment_predictor,
                                        alignment_batch_norm) if alignment_pairs else None
        # the masked forward never reaches it: frozen, so that AdamW and DDP do not see it
        self.up_projection.requires_grad_(False)
        self.register_buffer("pretraining_record", torch.zeros(RECORD_LENGTH, dtype=torch.float64))

    def encode_visible(self, x: torch.Tensor, visible: torch.Tensor) -> EncodedTokens:
        """Primus's encoder on the visible tokens only: ``down_projection``, the position table, then the Eva blocks
        on the kept tokens with their rotary embeddings, padding excluded as a key."""
        tokens = self.down_projection(x)
        grid = tuple(tokens.shape[2:])
        tokens = tokens.flatten(2).transpose(1, 2)
        if self.eva.pos_embed is not None:
            tokens = tokens + self.eva.pos_embed
        keep_indices, valid = visible_token_indices(visible)
        tokens = gather_tokens(tokens, keep_indices)
        rope = self.eva.rope.get_embed().to(tokens.dtype)[keep_indices][:, None]  # (B, 1, K, E), shared by heads
        attn_mask = padding_attention_mask(valid, tokens.dtype)
        for block in self.eva.blocks:
            tokens = block(tokens, rope=rope, attn_mask=attn_mask)
        return EncodedTokens(self.eva.norm(tokens), [], grid, keep_indices, valid)

    def forward(self, x: torch.Tensor, hidden: Optional[torch.Tensor] = None):
        """The masked forward, ``hidden`` (N, *grid) bool on the 8^3 token grid: (voxel prediction (N, T, C*8^3),
        token features (N, T, d)), as the hybrid network's."""
        if hidden is None:
            raise not_a_segmentation_network(
                "with nnUNetv2_train DATASET CONFIGURATION FOLD -tr nnUNetTrainerPrimusFinetune (Primus-M; _S, _B, _L "
                "for the other sizes) -pretrained_weights .../checkpoint_final.pth")
        return self.reconstruction(self.encode_visible(x, ~hidden))


class PrimusBackbone:
    """Mixed into a pre-training trainer: its network is Primus at the trainer's ``encoder_preset`` (a size of
    ``PRIMUS_SIZES``, M by default) and at the plan's patch rounded down to the levels' multiple."""
    description = "Primus-{preset} (8^3 tokens) at the plan's patch"
    network_preset = "Primus"  # recorded in the checkpoint (pretraining_record.py)
    memory_predicted = False  # pretraining/memory.py models the hybrid only: the plan's batch runs as planned
    encoder_preset = "M"

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """Primus has no deep supervision to switch (nnU-Net's own Primus trainers say the same): nnU-Net's hook would
        look for a U-Net decoder."""

    @staticmethod
    def backbone_levels(levels: LevelConfig) -> LevelConfig:
        """The method's levels on 8^3 tokens, MiM's L2 and L3 regions 2^3 tokens (16^3 voxels, the paper's)."""
        return replace(levels, token_size=PRIMUS_TOKEN_SIZE, l3_region_tokens=2 if levels.num_levels > 1 else 1)

    @classmethod
    def pretraining_plans(cls, plans: dict, configuration: str) -> dict:
        patch = round_patch_size(planned_patch_size(plans, configuration), cls.levels.patch_multiple)
        if cls.encoder_preset not in PRIMUS_SIZES:
            raise ValueError(f"{cls.__name__}: Primus size {cls.encoder_preset!r} is not one of "
                             f"{', '.join(PRIMUS_SIZES)}")
        plans = deepcopy(plans)
        config = plans["configurations"][configuration]
        config["patch_size"] = patch
        config["architecture"] = {
            "network_class_name": PRIMUS_PRETRAIN_CLASS, "_kw_requires_import": [],
            "arch_kwargs": {**PRIMUS_SIZES[cls.encoder_preset], **PRIMUS_SETTINGS, "input_shape": patch,
                            **cls.alignment_kwargs()}}
        return plans
