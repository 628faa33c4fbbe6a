"""Optimizer groups for fine-tuning: layer-wise learning-rate decay and a decoder-first start.

Depth of a parameter, counted along the pre-trained encoder from the input:

    1, 2, 3      conv stages 1-3
    4            patch embedding and the fusion of the conv stages into the tokens
    5 ... 4+N    transformer blocks 1..N
    5+N          final norm
    top          everything that was not pre-trained: full-resolution stem, U-Net decoder,
                 segmentation heads (``NEW_PREFIXES``)

With layer decay d, a parameter at depth k trains with lr * d^(top - k): the new layers at the
full rate, the first conv stage the slowest (BEiT / MAE fine-tuning practice). With
``encoder_start_epoch`` E > 0 the pre-trained parameters stay frozen (lr 0) for E epochs while
the new layers warm up, then warm up themselves: the decoder first learns to read the
pre-trained features before they move.
"""
import re
from typing import List

from torch import nn

NEW_PREFIXES = ("decoder.stages.", "decoder.transpconvs.", "decoder.seg_layers.", "encoder.stem.")


def encoder_depth(name: str, num_blocks: int) -> int:
    """Depth as in the module docstring; ``num_blocks + 6`` (top) for layers not pre-trained."""
    top = num_blocks + 6
    if name.startswith(NEW_PREFIXES):
        return top
    name = name.removeprefix("encoder.")
    if match := re.match(r"stages\.(\d+)\.", name):
        return int(match.group(1)) + 1
    if name.startswith(("patch_embed.", "fusion.")):
        return 4
    if match := re.match(r"blocks\.(\d+)\.", name):
        return 5 + int(match.group(1))
    if name.startswith("norm."):
        return 5 + num_blocks
    return top


def finetuning_param_groups(network: nn.Module, weight_decay: float, layer_decay: float = 1.0,
                            encoder_start_epoch: int = 0) -> List[dict]:
    """AdamW groups: no weight decay on norms and biases; per-depth ``lr_scale``; pre-trained
    parameters start at ``encoder_start_epoch`` (``start_epoch`` is read by WarmupCosineLR)."""
    num_blocks = len(network.encoder.blocks)
    top = num_blocks + 6
    groups = {}
    for name, param in network.named_parameters():
        if not param.requires_grad:
            continue
        depth = encoder_depth(name, num_blocks)
        decays = param.ndim > 1 and param.shape[:2] != (1, 1)
        key = (depth, decays)
        if key not in groups:
            groups[key] = {"params": [], "weight_decay": weight_decay if decays else 0.0,
                           "lr_scale": layer_decay ** (top - depth),
                           "start_epoch": 0 if depth == top else encoder_start_epoch, "depth": depth}
        groups[key]["params"].append(param)
    # new layers first: nnU-Net logs and prints the learning rate of the first group
    return [groups[k] for k in sorted(groups, reverse=True)]
