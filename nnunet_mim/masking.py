"""Token masks and the three MiM levels, built on the training device from one batch of crops.

    crop (B, C, 2P)  --avg-pool 2-->  L1 (B volumes of size P), 4 of its 8 token-grid octants hidden
                     --cut-------->  L2: the native-resolution crop under each hidden L1 octant
                                      (B*4 volumes of size P), 60% of tokens hidden
    each L2 volume   --cut+upsample->  L3: 4 hidden L2 tokens, each upsampled to P (B*16 volumes),
                                      50% of tokens hidden

That is the paper's 1+4+16 volumes per crop on 16^3 tokens. Two settings generalise it: ``l2_per_l1`` and
``l3_per_l2`` set how many sub-volumes each level cuts (fewer is cheaper: 1+2+2 is a quarter of the passes);
``l3_region_tokens`` makes an L3 volume a region of r^3 tokens instead of one token, and L2 then hides whole
regions of that size. A network of 8^3 tokens (Primus) uses r = 2: its L2 hides, and its L3 magnifies, the 16^3
voxel regions the paper's do.

Masks are boolean on the token grid, True = hidden. Each child volume records its parent volume
and the parent tokens that cover it, which the cross-level alignment loss pairs them by.
With ``num_levels=1`` this is MAE: the crop is the patch and tokens are hidden at random.
"""
import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from nnunet_mim.geometry import TOKEN_SIZE, check_patch_size


@dataclass(frozen=True)
class LevelConfig:
    num_levels: int = 3
    l1_hidden_octants: int = 4       # of 8; L1 mask ratio 0.5
    l1_mask_ratio: float = 0.75      # only used with num_levels == 1 (MAE, per-token masking)
    l2_per_l1: int = 4               # hidden L1 octants cut out as L2 volumes (at most l1_hidden_octants)
    l2_mask_ratio: float = 0.6       # of L2's regions (tokens when l3_region_tokens is 1)
    l3_per_l2: int = 4               # hidden L2 regions cut out per L2 volume
    l3_mask_ratio: float = 0.5
    token_size: int = TOKEN_SIZE
    l3_region_tokens: int = 1        # side, in tokens, of the region an L3 volume magnifies

    def __post_init__(self):
        if not 1 <= self.l2_per_l1 <= self.l1_hidden_octants:
            raise ValueError(f"l2_per_l1 {self.l2_per_l1}: L2 volumes are cut from the {self.l1_hidden_octants} "
                             "hidden L1 octants, so between 1 and that many")

    @property
    def crop_factor(self) -> int:
        """Crop size / patch size: MiM's L2 needs native-resolution octants of a 2x crop."""
        return 2 if self.num_levels > 1 else 1

    @property
    def patch_multiple(self) -> int:
        """What the pre-training patch is a multiple of: whole tokens, and for MiM an even number of
        them per axis (octants of the token grid) made of whole L3 regions."""
        if self.num_levels == 1:
            return self.token_size
        return self.token_size * math.lcm(self.crop_factor, self.l3_region_tokens)

    @property
    def volumes_per_crop(self) -> List[int]:
        """How many volumes of the patch size each level holds per crop: the passes a step pays for."""
        return [1, self.l2_per_l1, self.l2_per_l1 * self.l3_per_l2][:self.num_levels]

    def check_patch_size(self, patch_size: Sequence[int]) -> None:
        check_patch_size(patch_size, self.patch_multiple)

    def hierarchy_warning(self, patch_size: Sequence[int]) -> Optional[str]:
        """Why MiM's levels lose what makes them MiM at this patch, or None.

        At the paper's 96^3 an L1 octant is 3x3x3 tokens (hiding it hides a region, not a token)
        and an L3 volume is one token magnified 6x. With one token per octant along an axis,
        octant masking is per-token masking and L3 barely magnifies: the three levels are then
        nearly three per-token tasks at other scales."""
        octant = [p // self.token_size // 2 for p in patch_size]
        if self.num_levels == 1 or min(octant) >= 2:
            return None
        magnification = [p // (self.token_size * self.l3_region_tokens) for p in patch_size]
        return (f"at patch {list(patch_size)} an L1 octant is {octant} tokens (3x3x3 at the paper's 96^3): "
                f"hiding octants is hiding single tokens, and an L3 volume (one L2 region) is magnified only "
                f"{magnification}x (6x at 96^3). MiM's hierarchy needs at least 64 voxels per axis.")


@dataclass
class Level:
    volumes: torch.Tensor                    # (N, C, *P)
    hidden: torch.Tensor                     # (N, gz, gy, gx) bool
    parent_index: Optional[torch.Tensor]     # (N,) index into the previous level's volumes
    parent_tokens: Optional[torch.Tensor]    # (N, gz, gy, gx) bool over the parent's token grid


def random_token_mask(batch: int, grid: Sequence[int], ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Hide exactly ``round(ratio * N)`` random tokens per sample."""
    n = int(torch.tensor(grid).prod())
    n_hidden = int(round(ratio * n))
    order = torch.rand(batch, n, generator=generator).argsort(dim=1)
    hidden = torch.zeros(batch, n, dtype=torch.bool)
    hidden.scatter_(1, order[:, :n_hidden], True)
    return hidden.view(batch, *grid)


def regions_to_tokens(regions: torch.Tensor, side: int) -> torch.Tensor:
    """(N, *region grid) bool -> (N, *token grid): each region covers side^3 tokens."""
    for axis in (1, 2, 3):
        regions = regions.repeat_interleave(side, dim=axis)
    return regions


def octant_masks(grid: Sequence[int]) -> torch.Tensor:
    """(8, *grid) bool: octant o = (oz, oy, ox) bits covers half the grid along each axis."""
    masks = torch.zeros(8, *grid, dtype=torch.bool)
    hz, hy, hx = (g // 2 for g in grid)
    for o in range(8):
        oz, oy, ox = (o >> 2) & 1, (o >> 1) & 1, o & 1
        masks[o, oz * hz:(oz + 1) * hz, oy * hy:(oy + 1) * hy, ox * hx:(ox + 1) * hx] = True
    return masks


def random_octants(batch: int, n_hidden: int, generator: torch.Generator) -> torch.Tensor:
    """(B, n_hidden) distinct octant indices in [0, 8)."""
    return torch.rand(batch, 8, generator=generator).argsort(dim=1)[:, :n_hidden]


def octant_offset(octant: int, half: Sequence[int]) -> Tuple[int, int, int]:
    return tuple(((octant >> (2 - axis)) & 1) * half[axis] for axis in range(3))


def _cut(volume: torch.Tensor, start: Sequence[int], size: Sequence[int]) -> torch.Tensor:
    return volume[..., start[0]:start[0] + size[0], start[1]:start[1] + size[1], start[2]:start[2] + size[2]]


def build_levels(crops: torch.Tensor, cfg: LevelConfig, generator: torch.Generator) -> List[Level]:
    """Turn a batch of crops (B, C, crop_factor * P) into the levels of one training step."""
    device = crops.device
    patch = [s // cfg.crop_factor for s in crops.shape[2:]]
    cfg.check_patch_size(patch)
    grid = [p // cfg.token_size for p in patch]
    batch = crops.shape[0]

    if cfg.num_levels == 1:
        hidden = random_token_mask(batch, grid, cfg.l1_mask_ratio, generator)
        return [Level(crops, hidden.to(device), None, None)]

    # L1: the whole crop at half resolution, whole octants hidden
    l1 = F.avg_pool3d(crops, 2)
    octants = random_octants(batch, cfg.l1_hidden_octants, generator)     # (B, k)
    all_octants = octant_masks(grid)
    l1_hidden = all_octants[octants].any(dim=1)                           # (B, *grid)
    levels = [Level(l1, l1_hidden.to(device), None, None)]

    # L2: the native-resolution crop under each of the first l2_per_l1 hidden L1 octants (a random order), exactly
    octants = octants[:, :cfg.l2_per_l1]
    l2_volumes = [_cut(crops[b], octant_offset(int(o), patch), patch)
                  for b in range(batch) for o in octants[b]]
    l2_parent = torch.arange(batch).repeat_interleave(cfg.l2_per_l1)
    l2_parent_tokens = all_octants[octants.flatten()]
    r = cfg.l3_region_tokens
    region_grid = [g // r for g in grid]
    l2_hidden_regions = random_token_mask(len(l2_volumes), region_grid, cfg.l2_mask_ratio, generator)
    l2_hidden = regions_to_tokens(l2_hidden_regions, r)
    levels.append(Level(torch.stack(l2_volumes), l2_hidden.to(device), l2_parent.to(device),
                        l2_parent_tokens.to(device)))
    if cfg.num_levels == 2:
        return levels

    # L3: hidden L2 regions at native resolution, upsampled to the patch size
    l2 = levels[1].volumes
    n_regions = l2_hidden_regions[0].numel()
    if int(l2_hidden_regions.flatten(1).sum(1).min()) < cfg.l3_per_l2:
        raise ValueError(f"L2 hides {int(round(cfg.l2_mask_ratio * n_regions))} regions, fewer than the "
                         f"{cfg.l3_per_l2} L3 volumes per L2 volume; raise l2_mask_ratio or the patch size")
    # pick l3_per_l2 of each volume's hidden regions at random
    scores = torch.rand(l2.shape[0], n_regions, generator=generator) + l2_hidden_regions.flatten(1).float() * 2
    chosen = scores.argsort(dim=1, descending=True)[:, :cfg.l3_per_l2]      # (N2, k), all hidden
    side = cfg.token_size * r
    regions = []
    for i in range(l2.shape[0]):
        for flat in chosen[i].tolist():
            z, rem = divmod(flat, region_grid[1] * region_grid[2])
            y, x = divmod(rem, region_grid[2])
            regions.append(_cut(l2[i], (z * side, y * side, x * side), (side, side, side)))
    l3 = F.interpolate(torch.stack(regions), size=patch, mode="trilinear", align_corners=False)
    l3_parent = torch.arange(l2.shape[0]).repeat_interleave(cfg.l3_per_l2)
    l3_parent_regions = torch.zeros(len(regions), n_regions, dtype=torch.bool)
    l3_parent_regions[torch.arange(len(regions)), chosen.flatten()] = True
    l3_parent_tokens = regions_to_tokens(l3_parent_regions.view(len(regions), *region_grid), r)
    l3_hidden = random_token_mask(len(regions), grid, cfg.l3_mask_ratio, generator)
    levels.append(Level(l3, l3_hidden.to(device), l3_parent.to(device), l3_parent_tokens.to(device)))
    return levels
