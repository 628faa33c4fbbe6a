"""Optimiser pieces shared by pre-training and fine-tuning: AdamW groups and warm-up + cosine."""
import math
from typing import List

import torch
from torch import nn
from torch.optim.lr_scheduler import _LRScheduler


def adamw_param_groups(network: nn.Module, weight_decay: float) -> List[dict]:
    """Weight decay on weight matrices and kernels only: none on norms, biases, tokens, scales, or a learned
    position table (Primus's ``eva.pos_embed``, which timm's and Primus's ``no_weight_decay`` name too)."""
    decay, no_decay = [], []
    for name, param in network.named_parameters():
        if not param.requires_grad:
            continue
        matrix = param.ndim > 1 and param.shape[:2] != (1, 1) and not name.endswith("pos_embed")
        (decay if matrix else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class WarmupCosineLR(_LRScheduler):
    """Linear warm-up over ``warmup_epochs``, then cosine to zero at ``max_epochs``.

    Per parameter group, ``lr_scale`` (default 1) multiplies the rate and ``start_epoch``
    (default 0) delays the group's warm-up: lr 0 before it, then warm-up and a cosine that still
    ends at ``max_epochs``. Stepped with the epoch number, as nnU-Net steps its own schedulers; the
    pre-training trainer counts optimizer steps instead (any unit works: "epoch" is the step's index).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, peak_lr: float, warmup_epochs: int, max_epochs: int):
        self.peak_lr = peak_lr
        self.warmup_epochs = warmup_epochs
        self.max_epochs = max_epochs
        super().__init__(optimizer)

    def lr_at(self, epoch: int, start_epoch: int = 0) -> float:
        epoch -= start_epoch
        if epoch < 0:
            return 0.0
        if epoch < self.warmup_epochs:
            return self.peak_lr * (epoch + 1) / self.warmup_epochs
        progress = (epoch - self.warmup_epochs) / max(1, self.max_epochs - start_epoch - self.warmup_epochs)
        return self.peak_lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    def step(self, epoch: int = None):
        epoch = self.last_epoch + 1 if epoch is None else epoch
        self.last_epoch = epoch
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(epoch, group.get("start_epoch", 0)) * group.get("lr_scale", 1.0)
        self._last_lr = [group["lr"] for group in self.optimizer.param_groups]
