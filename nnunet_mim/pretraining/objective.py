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
# the collapse monitors (logged, not optimised) and the spread under which each says "collapsed": the spread over
# the batch of unit-length vectors, 0 when every volume gives one vector (docs/method.md, measured)
COLLAPSE_THRESHOLDS = {
    # the pooled features the heads take in: the encoder's collapse. Measured (preset T, MNI152 crops): 0.062 at
    # the first step, 0.05-0.09 over 300 steps of the default form, 0.004-0.011 in the collapsed phases of the
    # authors' form and of BYOL's without batch norm
    "feature_std": 0.02,
    # the heads' targets: the heads' collapse (the authors' form falls to 1e-3); batch-normalised heads (the
    # default) hold it near 1/sqrt(width) whatever their inputs do, so it cannot see the encoder's
    "target_std": 0.01,
}


def loss_term_names(num_levels: int, alignment: bool) -> List[str]:
    """The terms ``mim_objective`` returns besides ``loss``, in its order: what a trainer logs and plots."""
    names = [f"rec_l{i + 1}" for i in range(num_levels)]
    if alignment:
        names += [f"align_l{i}_l{i + 1}" for i in range(1, num_levels)] + list(COLLAPSE_THRESHOLDS)
    return names


def parent_features(features: torch.Tensor, child: Level) -> torch.Tensor:
    """Mean of the parent's token features over the tokens that cover each child: (N_child, d)."""
    parents = features[child.parent_index]                          # (N_child, T, d)
    weights = child.parent_tokens.flatten(1).to(features.dtype)     # (N_child, T)
    return (parents * weights[..., None]).sum(1) / weights.sum(1, keepdim=True)


def spread(vectors: torch.Tensor) -> torch.Tensor:
    """The spread over the batch of the unit-length ``vectors`` (N, d): mean over dimensions of the std."""
    return torch.nn.functional.normalize(vectors.detach().float(), dim=-1).std(0).mean()


def mim_objective(masked_forward: MaskedForward, alignment: Optional[AlignmentHeads],
                  levels: List[Level], token_size: int, reconstruction_weights: Sequence[float],
                  alignment_weight: float) -> Dict[str, torch.Tensor]:
    """Every loss term (``rec_l1``.., ``align_l1_l2``..), their weighted sum ``loss``, and with
    alignment the collapse monitors ``feature_std`` and ``target_std`` (``COLLAPSE_THRESHOLDS``).

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
        features, targets = [], []
        for i in range(1, len(levels)):
            pooled = level_features[i].mean(1)
            child, target = alignment(i - 1, pooled, parent_features(level_features[i - 1], levels[i]))
            terms[f"align_l{i}_l{i + 1}"] = alignment_loss(child, target)
            total = total + alignment_weight * terms[f"align_l{i}_l{i + 1}"]
            features.append(spread(pooled))
            targets.append(spread(target))
        # SimSiam's diagnostic, where each collapse shows: the encoder's at the heads' inputs, the heads' at
        # their targets (COLLAPSE_THRESHOLDS)
        terms["feature_std"] = torch.stack(features).mean()
        terms["target_std"] = torch.stack(targets).mean()
    terms["loss"] = total
    return terms
