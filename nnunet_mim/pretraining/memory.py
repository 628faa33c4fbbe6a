"""Peak memory of one pre-training step, predicted before the step runs.

One function, ``predict_step``, answers for the trainers (which micro-batch to run on the device they
got), for ``nnunet-mim pretrain-plan`` (the same answer without a GPU) and for the GPU check (which
compares it with CUDA's own peak), so the three cannot disagree.

Where the bytes go. A step holds the weights, their gradients and AdamW's two moments (16 bytes per
trainable parameter, 4 per frozen one), and, between forward and backward, every tensor autograd saved
for the backward. The saved tensors are counted, not guessed: ``measure_volume_cost`` runs one masked
forward of the real network under the step's precision inside ``torch.autograd.graph.saved_tensors_hooks``
and adds up the storages it keeps, attributed to the part of the network that saved them. It does so
for one volume at three small shapes on the CPU (a second or two for preset B) and solves for

    bytes = per_forward + per_voxel * voxels + per_visible_token * visible tokens

``per_forward`` is what a forward saves once whatever its batch (autocast's low-precision weight copies),
``per_voxel`` everything that follows the volume (conv stages, fusion, token decoder, losses) and
``per_visible_token`` the encoder's transformer, which sees only the visible tokens. A MiM step is 21
volumes per sample in one forward, each padded to the largest number of visible tokens of any level.

Activation checkpointing of the conv blocks (the trainers use it only where nothing else fits) keeps
each block's input instead of what the block saves, and recomputes one block at a time in the backward:
the prediction takes the conv blocks' share out, puts their inputs in, and adds the largest block's
activations for the whole micro-batch as the recomputation's transient.

On top: the gradient of the largest activation and of its input (twice the largest tensor a conv block
saves, for every volume of the forward) while the backward runs through it, and a fixed reserve for the
CUDA context, cuDNN's workspaces and the allocator's fragmentation (``RESERVE_BYTES``, ``USABLE_FRACTION``).
"""
import functools
import json
import math
import os
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

from nnunet_mim.geometry import TOKEN_SIZE
from nnunet_mim.masking import LevelConfig

RESERVE_BYTES = 1.5 * 2 ** 30   # CUDA context, cuDNN / cuBLAS workspaces
USABLE_FRACTION = 0.92           # of what is left: the caching allocator's fragmentation
REFERENCE_PATCHES = ((32, 32, 32), (32, 32, 64))  # one volume each, small enough for any preset on a CPU
GIB = 2 ** 30
# the memory to plan for, in GiB, instead of the device's: a smaller share of a shared GPU, or a CPU run
# that should choose as a GPU of that size would (the tests)
MEMORY_VARIABLE = "NNUNET_MIM_GPU_MEMORY_GB"
MICRO_BATCH_VARIABLE = "NNUNET_MIM_MICRO_BATCH"


@dataclass(frozen=True)
class VolumeCost:
    """Bytes a masked forward saves for the backward, per part (see the module docstring)."""
    per_forward: float
    per_voxel: float
    per_visible_token: float
    conv_blocks_per_voxel: float      # all conv blocks together: what checkpointing frees
    conv_inputs_per_voxel: float      # what checkpointing keeps: each conv block's input
    largest_block_per_voxel: float    # the largest single conv block: recomputed at once under checkpointing
    largest_tensor_per_voxel: float   # the largest single tensor a conv block saves: its gradient is the transient


@dataclass(frozen=True)
class StepMemory:
    micro_batch: int
    checkpointing: bool
    static: float       # weights, gradients, AdamW moments
    saved: float        # saved for the backward
    transient: float    # the backward's working set on top of it
    volumes: int        # volumes in one forward

    @property
    def total(self) -> float:
        return self.static + self.saved + self.transient

    def describe(self) -> str:
        return (f"micro-batch {self.micro_batch} ({self.volumes} volumes per forward"
                f"{', conv blocks checkpointed' if self.checkpointing else ''}): {self.total / GIB:.1f} GiB = "
                f"{self.saved / GIB:.1f} saved for the backward + {self.transient / GIB:.1f} transient + "
                f"{self.static / GIB:.2f} weights and optimizer")


def usable_bytes(device_bytes: float) -> float:
    """What a step may plan to take of a device with ``device_bytes`` of memory."""
    return max(0.0, (device_bytes - RESERVE_BYTES) * USABLE_FRACTION)


def device_memory(device: "torch.device") -> Optional[float]:
    """Bytes of memory to plan a step for: ``NNUNET_MIM_GPU_MEMORY_GB`` if set, else a CUDA device's total,
    else None (the CPU: no limit the trainer could plan for)."""
    value = os.environ.get(MEMORY_VARIABLE)
    if value:
        try:
            gib = float(value)
        except ValueError:
            gib = -1.0
        if not gib > 0:
            raise ValueError(f"{MEMORY_VARIABLE}={value!r}: give the GPU memory in GiB, a positive number")
        return gib * GIB
    if device.type == "cuda":
        return float(torch.cuda.get_device_properties(device).total_memory)
    return None


def requested_micro_batch(default: Optional[int]) -> Optional[int]:
    """``NNUNET_MIM_MICRO_BATCH`` if set, else the trainer's ``micro_batch`` (None: chosen to fit)."""
    value = os.environ.get(MICRO_BATCH_VARIABLE)
    if not value:
        return default
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{MICRO_BATCH_VARIABLE}={value!r}: give a positive whole number of samples")
    return int(value)


def visible_tokens(levels: LevelConfig, grid: Sequence[int]) -> int:
    """Tokens each volume of a step shows the transformer: the most of any level (the rest is padding)."""
    n = math.prod(grid)
    if levels.num_levels == 1:
        return n - round(levels.l1_mask_ratio * n)
    hidden = [n * levels.l1_hidden_octants // 8, round(levels.l2_mask_ratio * n), round(levels.l3_mask_ratio * n)]
    return max(n - h for h in hidden[:levels.num_levels])


def _saved_bytes(network, volume: torch.Tensor, hidden: torch.Tensor, dtype: Optional[torch.dtype]):
    """(total, conv blocks, conv block inputs, largest block, largest tensor of a block) saved by one masked
    forward and its reconstruction loss."""
    from nnunet_mim.architecture.blocks import MaskedConvBlock
    from nnunet_mim.losses import reconstruction_loss
    storages, scope = {}, []
    block_bytes, block_inputs, block_tensors = {}, [], [0]

    def pack(tensor):
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in storages:
            storages[key] = storage.nbytes()
            if scope:
                block_bytes[scope[-1]] = block_bytes.get(scope[-1], 0) + storage.nbytes()
                block_tensors[0] = max(block_tensors[0], storage.nbytes())
        return tensor

    def enter(module, args):
        scope.append(id(module))
        block_inputs.append(args[0].numel() * args[0].element_size())

    def leave(module, args, output):
        scope.pop()

    handles = []
    for module in network.modules():
        if isinstance(module, MaskedConvBlock):
            handles.append(module.register_forward_pre_hook(enter))
            handles.append(module.register_forward_hook(leave))
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                prediction, _ = network(volume, hidden)
                reconstruction_loss(prediction, volume, hidden, TOKEN_SIZE)
    finally:
        for handle in handles:
            handle.remove()
    return (sum(storages.values()), sum(block_bytes.values()), sum(block_inputs),
            max(block_bytes.values(), default=0), block_tensors[0])


@functools.lru_cache(maxsize=16)
def _measure(network_json: str, input_channels: int, dtype_name: Optional[str]) -> Tuple[VolumeCost, int, int]:
    """(saved bytes of one volume, trainable and frozen parameters) of the pre-training network as configured.
    Its alignment heads, if any, are built and counted; the masked forward never reaches them."""
    from nnunet_mim.pretraining.model import MiMPretrainNetwork
    dtype = getattr(torch, dtype_name) if dtype_name else None
    torch.manual_seed(0)
    network = MiMPretrainNetwork(input_channels, 2, **json.loads(network_json))
    rows = []  # (voxels, visible tokens, measured parts)
    with torch.random.fork_rng():
        for patch, visible_share in ((REFERENCE_PATCHES[0], 1.0), (REFERENCE_PATCHES[0], 0.5),
                                     (REFERENCE_PATCHES[1], 1.0)):
            grid = [p // TOKEN_SIZE for p in patch]
            n = math.prod(grid)
            hidden = torch.zeros(1, n, dtype=torch.bool)
            hidden[:, :n - round(visible_share * n)] = True
            volume = torch.randn(1, input_channels, *patch)
            rows.append((math.prod(patch), n - int(hidden.sum()), _saved_bytes(network, volume,
                                                                             hidden.view(1, *grid), dtype)))
    (v1, k1, a), (_, k2, b), (v3, k3, c) = rows
    per_token = (a[0] - b[0]) / (k1 - k2)
    per_voxel = (c[0] - a[0] - per_token * (k3 - k1)) / (v3 - v1)
    per_forward = a[0] - per_voxel * v1 - per_token * k1
    # the conv blocks see every voxel, masked or not: their bytes follow the voxels alone
    cost = VolumeCost(per_forward=per_forward, per_voxel=per_voxel, per_visible_token=per_token,
                      conv_blocks_per_voxel=c[1] / v3, conv_inputs_per_voxel=c[2] / v3,
                      largest_block_per_voxel=c[3] / v3, largest_tensor_per_voxel=c[4] / v3)
    trainable = sum(p.numel() for p in network.parameters() if p.requires_grad)
    return cost, trainable, sum(p.numel() for p in network.parameters()) - trainable


def _measured(network_kwargs: dict, levels: Optional[LevelConfig], input_channels: int,
              dtype: Optional[torch.dtype]) -> Tuple[VolumeCost, int, int]:
    """``_measure`` of the network ``network_kwargs`` configure; where they do not say how many alignment head
    pairs it has (a preset's keywords alone), one per adjacent pair of ``levels``."""
    if "alignment_pairs" not in network_kwargs and levels is not None:
        network_kwargs = {**network_kwargs, "alignment_pairs": levels.num_levels - 1}
    return _measure(json.dumps(network_kwargs, sort_keys=True), input_channels,
                    str(dtype).removeprefix("torch.") if dtype is not None else None)


def measure_volume_cost(network_kwargs: dict, input_channels: int = 1,
                        dtype: Optional[torch.dtype] = torch.bfloat16) -> VolumeCost:
    """The saved bytes of one volume, measured on the CPU (cached per network and precision)."""
    return _measured(network_kwargs, None, input_channels, dtype)[0]


def predict_step(network_kwargs: dict, levels: LevelConfig, patch_size: Sequence[int], micro_batch: int,
                 input_channels: int = 1, dtype: Optional[torch.dtype] = torch.bfloat16,
                 checkpointing: bool = False) -> StepMemory:
    """Peak memory of one pre-training step of ``micro_batch`` samples at ``patch_size``."""
    cost, trainable, frozen = _measured(network_kwargs, levels, input_channels, dtype)
    grid = [p // levels.token_size for p in patch_size]
    voxels = math.prod(patch_size)
    volumes = sum(levels.volumes_per_crop) * micro_batch
    per_volume = cost.per_voxel * voxels + cost.per_visible_token * visible_tokens(levels, grid)
    transient = 2 * cost.largest_tensor_per_voxel * voxels * volumes
    if checkpointing:
        per_volume += (cost.conv_inputs_per_voxel - cost.conv_blocks_per_voxel) * voxels
        transient += cost.largest_block_per_voxel * voxels * volumes
    return StepMemory(micro_batch=micro_batch, checkpointing=checkpointing, static=16 * trainable + 4 * frozen,
                      saved=cost.per_forward + per_volume * volumes, transient=transient, volumes=volumes)


class DoesNotFit(ValueError):
    pass


def choose_micro_batch(network_kwargs: dict, levels: LevelConfig, patch_size: Sequence[int], plan_batch: int,
                       device_bytes: float, input_channels: int = 1, dtype: Optional[torch.dtype] = torch.bfloat16,
                       micro_batch: Optional[int] = None) -> StepMemory:
    """The largest micro-batch that divides ``plan_batch`` (so that accumulation keeps the recipe's batch
    exactly) and whose step fits ``device_bytes``; activation checkpointing of the conv blocks only where
    one sample does not fit without it. ``micro_batch`` asks for one size: it is checked, not chosen.
    Raises ``DoesNotFit`` with the prediction and the fixes."""
    budget = usable_bytes(device_bytes)

    def predict(batch: int, checkpointing: bool) -> StepMemory:
        return predict_step(network_kwargs, levels, patch_size, batch, input_channels, dtype, checkpointing)

    where = (f"at patch {list(patch_size)} on {device_bytes / GIB:.0f} GiB ({budget / GIB:.1f} GiB usable after "
             f"{RESERVE_BYTES / GIB:.1f} GiB for the CUDA context and {1 - USABLE_FRACTION:.0%} for fragmentation)")
    if micro_batch is not None:
        if micro_batch > plan_batch or plan_batch % micro_batch:
            raise DoesNotFit(f"micro-batch {micro_batch} does not divide the batch of {plan_batch} per optimizer "
                             f"step of this process: choose one of "
                             f"{[b for b in range(1, plan_batch + 1) if plan_batch % b == 0]}")
        for checkpointing in (False, True):
            step = predict(micro_batch, checkpointing)
            if step.total <= budget:
                return step
        raise DoesNotFit(f"micro-batch {micro_batch} does not fit {where}: predicted {step.describe()}. Leave the "
                         "micro-batch to the trainer (it chooses the largest that fits) or ask for a smaller one")
    for checkpointing in (False, True):
        for batch in (b for b in range(plan_batch, 0, -1) if plan_batch % b == 0):
            step = predict(batch, checkpointing)
            if step.total <= budget:
                return step
    raise DoesNotFit(f"one sample does not fit {where}, even with the conv blocks checkpointed: predicted "
                     f"{step.describe()}. Pre-train at a smaller patch (a plans file with a smaller 3d_fullres "
                     "patch_size, or a configuration at lower resolution), with MAE instead of MiM (1 volume per "
                     "sample instead of 21), or on a GPU with more memory; `nnunet-mim pretrain-plan` shows the "
                     "options")
