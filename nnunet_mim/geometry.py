"""The hybrid network's geometry, which masking, the networks, the plans and the memory model share: the token
size, the strides of the stages, and the check that a patch is made of whole tokens. Plain numbers, no
network: masking imports it without importing the network."""
from typing import Sequence

TOKEN_SIZE = 16  # voxels per token side: four stride-2 downsamplings
STRIDES = [[1, 1, 1]] + [[2, 2, 2]] * 4  # the full-resolution stem, conv stages 1-3, the tokens


def check_patch_size(patch_size: Sequence[int], multiple: int = TOKEN_SIZE) -> None:
    """Raise a ValueError naming the nearest valid sizes when an axis is not a multiple."""
    bad = [s for s in patch_size if s % multiple or s <= 0]
    if bad:
        down = [max(multiple, s // multiple * multiple) for s in patch_size]
        up = [-(-s // multiple) * multiple for s in patch_size]
        raise ValueError(f"patch size {list(patch_size)} is not a multiple of {multiple} on every axis; "
                         f"nearest valid sizes: {down} or {up}")
