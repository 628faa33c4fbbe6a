"""The two MiM losses: masked reconstruction per level and cross-level alignment."""
import torch
import torch.nn.functional as F


def patchify(volumes: torch.Tensor, token_size: int) -> torch.Tensor:
    """(N, C, Z, Y, X) -> (N, tokens, C * t^3), tokens in raster order of the token grid."""
    n, c, z, y, x = volumes.shape
    t = token_size
    v = volumes.reshape(n, c, z // t, t, y // t, t, x // t, t)
    return v.permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(n, (z // t) * (y // t) * (x // t), c * t ** 3)


def unpatchify(tokens: torch.Tensor, channels: int, grid, token_size: int) -> torch.Tensor:
    """Inverse of ``patchify``."""
    n = tokens.shape[0]
    t = token_size
    v = tokens.reshape(n, *grid, channels, t, t, t).permute(0, 4, 1, 5, 2, 6, 3, 7)
    return v.reshape(n, channels, grid[0] * t, grid[1] * t, grid[2] * t)


def token_statistics(volumes: torch.Tensor, token_size: int, eps: float = 1e-6):
    """(patchified volumes, per-token mean, per-token std) as used by the normalised targets."""
    target = patchify(volumes, token_size)
    mean = target.mean(dim=-1, keepdim=True)
    std = (target.var(dim=-1, keepdim=True, unbiased=False) + eps).sqrt()
    return target, mean, std


def normalized_targets(volumes: torch.Tensor, token_size: int) -> torch.Tensor:
    """Each token standardised by its own mean and variance (MAE's ``norm_pix_loss``)."""
    target, mean, std = token_statistics(volumes, token_size)
    return (target - mean) / std


def reconstruction_loss(prediction: torch.Tensor, volumes: torch.Tensor, hidden: torch.Tensor,
                        token_size: int) -> torch.Tensor:
    """Mean squared error on hidden tokens only, against per-token normalised targets.

    prediction (N, tokens, C * t^3); volumes (N, C, *P); hidden (N, *grid) bool.
    """
    per_token = (prediction.float() - normalized_targets(volumes.float(), token_size)).pow(2).mean(dim=-1)
    hidden = hidden.flatten(1).float()
    return (per_token * hidden).sum() / hidden.sum().clamp_min(1)


def alignment_loss(child: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL-style ``2 - 2 cos(child, target)``, averaged over pairs. Where the gradient stops is the
    alignment heads' decision (``pretraining/model.py``), not this function's."""
    return (2 - 2 * F.cosine_similarity(child.float(), target.float(), dim=-1)).mean()
