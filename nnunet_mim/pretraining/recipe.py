"""The pre-training recipe's batch and learning rate, in one place: what the trainer runs, what its
log and ``progress.png`` print, what docs/method.md describes.

nnU-Net plans a batch of a few crops (2 on most 3D datasets) for the GPU memory it targets. The
paper's learning-rate rule is stated per 256 crops, so at a plan batch of 2 it gives a rate a
thousand times below the method's design. The recipe therefore accumulates gradients over
micro-steps up to an *effective batch* and scales the rate on that:

    micro-batch        the plan's batch, split by nnU-Net over the ranks of a DDP run
    accumulation       micro-steps per optimizer step = ceil(effective batch / plan batch)
    effective batch    plan batch x accumulation (the plan batch is already global over ranks)
    lr                 base_lr x effective batch / 256

The same effective batch therefore holds on one GPU and on eight; the schedule (warm-up, cosine)
counts optimizer steps, and every epoch ends on an optimizer step, so checkpoints and ``--c``
always fall on an accumulation boundary.
"""
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class PretrainingRecipe:
    plan_batch: int          # crops per micro-step, all ranks together
    target_batch: int        # the effective batch asked for (the trainer's ``effective_batch``)
    base_lr: float           # per 256 crops of effective batch

    def __post_init__(self):
        if self.plan_batch < 1 or self.target_batch < 1 or not self.base_lr > 0:
            raise ValueError(f"a pre-training recipe needs a positive batch and lr, got plan batch {self.plan_batch},"
                             f" effective batch {self.target_batch}, base lr {self.base_lr}")

    @property
    def accumulation_steps(self) -> int:
        return math.ceil(self.target_batch / self.plan_batch)

    @property
    def effective_batch(self) -> int:
        return self.plan_batch * self.accumulation_steps

    @property
    def lr(self) -> float:
        return self.base_lr * self.effective_batch / 256

    def micro_steps(self, optimizer_steps: int) -> int:
        return optimizer_steps * self.accumulation_steps

    def describe(self) -> str:
        return (f"lr {self.lr:.3g} (= {self.base_lr:g} x {self.effective_batch} / 256); micro-batch {self.plan_batch} "
                f"(all ranks) x {self.accumulation_steps} accumulation steps = effective batch {self.effective_batch}")
