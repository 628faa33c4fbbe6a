"""A picture of what pre-training does: per level, the input, what the network sees, and its
reconstruction (mid axial slice of the first volume of each level)."""
from typing import List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from nnunet_mim.losses import token_statistics, unpatchify  # noqa: E402
from nnunet_mim.masking import Level, LevelConfig, build_levels  # noqa: E402


def save_reconstruction_preview(pretrain_network, crops: torch.Tensor, config: LevelConfig, seed: int, filename: str,
                                title: str) -> None:
    """``save_preview`` of the network's reconstruction of ``crops`` under masks drawn from ``seed`` (the same
    masks at every epoch), in eval mode and without gradients."""
    training = pretrain_network.training
    pretrain_network.eval()
    with torch.no_grad():
        levels = build_levels(crops, config, torch.Generator().manual_seed(seed))
        predictions = [pretrain_network(level.volumes, level.hidden)[0] for level in levels]
    pretrain_network.train(training)
    save_preview(levels, predictions, config.token_size, filename, title)


def reconstruct(prediction: torch.Tensor, volumes: torch.Tensor, hidden: torch.Tensor, token_size: int) -> torch.Tensor:
    """Undo the per-token normalisation with the true token statistics; keep visible tokens as input."""
    target, mean, std = token_statistics(volumes, token_size)
    mixed = torch.where(hidden.flatten(1)[..., None], prediction * std + mean, target)
    return unpatchify(mixed, volumes.shape[1], hidden.shape[1:], token_size)


def save_preview(levels: List[Level], predictions: List[torch.Tensor], token_size: int, filename: str,
                 title: str) -> None:
    fig, axes = plt.subplots(len(levels), 3, figsize=(9, 3 * len(levels)), squeeze=False)
    for row, (level, prediction) in enumerate(zip(levels, predictions)):
        volume, hidden = level.volumes[:1].float().cpu(), level.hidden[:1].cpu()
        recon = reconstruct(prediction[:1].float().cpu(), volume, hidden, token_size)
        visible = unpatchify((~hidden).flatten(1)[..., None].float().expand(-1, -1, token_size ** 3),
                             1, hidden.shape[1:], token_size)
        z = volume.shape[2] // 2
        images = [volume[0, 0, z], (volume * visible)[0, 0, z], recon[0, 0, z]]
        lo, hi = float(volume.min()), float(volume.max())
        for col, (image, name) in enumerate(zip(images, ["input", "masked input", "reconstruction"])):
            ax = axes[row, col]
            ax.imshow(image.numpy(), cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(f"L{row + 1} {name}", fontsize=9)
            ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(filename, dpi=80)
    plt.close(fig)
