"""One MiM (or MAE) training objective: all levels in one batched forward, then the losses.

    levels (masking.build_levels) -> concatenate every volume of every level
    -> the masked forward of the network (one call) -> split back per level
    -> reconstruction loss per level + alignment loss per adjacent level pair
"""
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from nnunet_mim.losses import alignment_loss, reconstruction_loss
from nnunet_mim.masking import Level

MaskedForward = Callable[[torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]
# (pair index, pooled child features, pooled parent features) -> (child output, target)
AlignmentHeads = Callable[[int, torch.Tensor, torch.Tensor], Tuple[torch.Tensor, torch.Tensor]]
# a run whose proj_std stays below this is collapsed: healthy is about 1/sqrt(projector dim), 1/16 at 256
COLLAPSE_THRESHOLD = 0.01


def parent_features(features: torch.Tensor, child: Level) -> torch.Tensor:
    """Mean of the parent's token features over the tokens that cover each child: (N_child, d)."""
    parents = features[child.parent_index]                          # (N_child, T, d)
    weights = child.parent_tokens.flatten(1).to(features.dtype)     # (N_child, T)
    return (parents * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)


def mim_objective(masked_forward: MaskedForward, alignment: Optional[AlignmentHeads],
                  levels: List[Level], token_size: int, reconstruction_weights: Sequence[float],
                  alignment_weight: float) -> Dict[str, torch.Tensor]:
    """Every loss term (``rec_l1``.., ``align_l1_l2``..), their weighted sum ``loss``, and with
    alignment the collapse monitor ``proj_std``.

    ``masked_forward(volumes, hidden) -> (prediction, token features)`` is the pre-training
    network (``MiMPretrainNetwork.__call__`` with a mask), ``alignment`` its ``AlignmentHeads``,
    which take the parent's features as a stop-gradient.
    """
    volumes = torch.cat([level.volumes for level in levels])
    hidden = torch.cat([level.hidden for level in levels])
    prediction, features = masked_forward(volumes, hidden)
    sizes = [level.volumes.shape[0] for level in levels]
    predictions, level_features = prediction.split(sizes), features.split(sizes)

    terms = {}
    total = 0
    for i, level in enumerate(levels):
        terms[f"rec_l{i + 1}"] = reconstruction_loss(predictions[i], level.volumes, level.hidden, token_size)
        total = total + reconstruction_weights[i] * terms[f"rec_l{i + 1}"]
    if alignment_weight > 0:
        spreads = []
        for i in range(1, len(levels)):
            child, target = alignment(i - 1, level_features[i].mean(1),
                                      parent_features(level_features[i - 1], levels[i]))
            terms[f"align_l{i}_l{i + 1}"] = alignment_loss(child, target)
            total = total + alignment_weight * terms[f"align_l{i}_l{i + 1}"]
            spreads.append(torch.nn.functional.normalize(target.detach().float(), dim=-1).std(0).mean())
        # collapse monitor, not a loss (SimSiam's diagnostic): the spread of the unit-length targets
        # over the batch, about 1/sqrt(projector dim) when healthy, 0 when every volume maps to one
        # vector and the alignment loss is won trivially
        terms["proj_std"] = torch.stack(spreads).mean()
    terms["loss"] = total
    return terms
