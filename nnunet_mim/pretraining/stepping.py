"""Micro-steps and optimizer steps of the pre-training recipe (recipe.py). The micro-batch is the largest part of
the plan's batch that fits the device (predicted before the first step, pretraining/memory.py), the rest reached
by accumulation. Gradients accumulated over micro-steps are applied once, on every rank alike, or discarded when
a micro-step of the accumulation or the gradient norm was not finite (counted, said in the log); the gradient
scaler only for fp16; the moving-average target of the alignment heads moved once per applied step, its
momentum on a cosine from ``alignment_target_momentum``'s start to its end."""
import math
from typing import List

import numpy as np
import torch
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from torch import distributed as dist

from nnunet_mim.precision import autocast_dtype
from nnunet_mim.pretraining.memory import DoesNotFit, choose_micro_batch, device_memory, requested_micro_batch
from nnunet_mim.pretraining.recipe import PretrainingRecipe


class AccumulatedStepMixin:
    """``memory_predicted`` is the backbone's (backbones/): False for a network the memory model does not know, whose
    plan's batch then runs as planned."""

    @property
    def optimizer_step(self) -> int:
        """Index of the optimizer step the current micro-step accumulates into, over the whole run."""
        return self.current_epoch * self.optimizer_steps_per_epoch + self.micro_step // self.recipe.accumulation_steps

    def _set_batch_size_and_oversample(self):
        """nnU-Net's batch per process, then the micro-batch that fits this device's memory: the step's peak
        is predicted before it runs (pretraining/memory.py); accumulation keeps the recipe's effective batch
        and its lr; the conv blocks are checkpointed only where one sample does not fit otherwise."""
        super()._set_batch_size_and_oversample()
        device_bytes, requested = device_memory(self.device), requested_micro_batch(self.micro_batch)
        if not self.memory_predicted:
            if requested is not None:
                raise RuntimeError(f"a micro-batch (NNUNET_MIM_MICRO_BATCH, micro_batch) is not supported for "
                                   f"{self.network_preset} pre-training yet: unset it, or plan a smaller batch")
            if device_bytes is not None:
                self.print_to_log_file(f"the memory of a {self.network_preset} pre-training step is not "
                                       f"predicted: the plan's batch {self.batch_size} runs as planned, without "
                                       "checkpointing")
            return
        if device_bytes is None and requested is None:
            return  # the CPU: nothing to plan against
        world = dist.get_world_size() if self.is_ddp else 1
        channels = determine_num_input_channels(self.plans_manager, self.configuration_manager, self.dataset_json)
        try:
            step = choose_micro_batch(self.configuration_manager.network_arch_init_kwargs, self.levels,
                                      self.configuration_manager.patch_size, self.batch_size,
                                      device_bytes or float("inf"), channels, autocast_dtype(self.device), requested)
        except DoesNotFit as error:
            raise RuntimeError(f"{self.method} pre-training: {error}") from None
        chosen = torch.tensor([step.micro_batch, -int(step.checkpointing)])
        if self.is_ddp:  # every rank must run the same number of micro-steps
            dist.all_reduce(chosen, op=dist.ReduceOp.MIN)
            if int(chosen[0]) < self.batch_size and self.configuration_manager.batch_size % world:
                raise RuntimeError(f"micro-batch {int(chosen[0])}: the plan's batch of "
                                   f"{self.configuration_manager.batch_size} does not split evenly over {world} "
                                   "processes; run on a number of GPUs that divides it")
        micro_batch, self.checkpoint_conv_blocks = int(chosen[0]), bool(chosen[1])
        self.print_to_log_file(f"predicted peak memory of a step, {step.describe()}; device "
                               f"{(device_bytes or 0) / 2 ** 30:.0f} GiB")
        if micro_batch != self.batch_size:
            accumulation = self.batch_size // micro_batch
            self.recipe = PretrainingRecipe(micro_batch * world, self.recipe.effective_batch, self.base_lr)
            self.num_iterations_per_epoch = self.recipe.micro_steps(self.optimizer_steps_per_epoch)
            self.print_to_log_file(f"micro-batch {micro_batch} instead of the plan's {self.batch_size} per process, "
                                   f"{accumulation}x the accumulation: the same effective batch and lr")
            self.batch_size = micro_batch

    def _uses_scaler(self) -> bool:
        return self.grad_scaler is not None

    def _optimizer_step(self) -> bool:
        """Apply the accumulated gradients; False, and the weights unchanged, where a micro-step of
        the accumulation or the gradient norm was not finite (all ranks decide alike)."""
        finite = self._finite_on_all_ranks(self.accumulated_loss)
        if self._uses_scaler():
            self.grad_scaler.unscale_(self.optimizer)
        # the gradients are all-reduced: every rank sees the same norm
        grad_norm = torch.nn.utils.clip_grad_norm_(self.network.parameters(), 3.0)
        finite = finite and bool(torch.isfinite(grad_norm))
        if finite and self._uses_scaler():
            self.grad_scaler.step(self.optimizer)
        elif finite:
            self.optimizer.step()
        if self._uses_scaler():
            self.grad_scaler.update()  # lowers the scale after an overflow
        self.optimizer.zero_grad(set_to_none=True)
        if not finite:
            self.skipped_steps += 1
        elif self.pretrain_network.alignment is not None:
            self.pretrain_network.alignment.update_target(self.target_momentum(self.optimizer_step))
        return finite

    def target_momentum(self, step: int) -> float:
        """``alignment_target_momentum`` at optimizer step ``step`` of the run (cosine from start to end)."""
        start, end = self.alignment_target_momentum
        progress = min(1.0, step / max(1, self.num_epochs * self.optimizer_steps_per_epoch - 1))
        return end - (end - start) * (math.cos(math.pi * progress) + 1) / 2

    def _finite_on_all_ranks(self, value: torch.Tensor) -> bool:
        finite = torch.isfinite(value).float()
        if self.is_ddp:  # all ranks must agree, or the ones that step wait forever for the others
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        return bool(finite)

    def _mean_over_ranks(self, outputs: List[dict], key: str) -> float:
        values = np.array([o[key] for o in outputs], dtype=float)
        if self.is_ddp:
            gathered = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, values)
            values = np.concatenate(gathered)
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
