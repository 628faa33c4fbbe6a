"""Mixed precision, decided once per run: bf16 autocast where the GPU has it (no gradient scaler: bf16
keeps fp32's range), else fp16 autocast with a gradient scaler; off on the CPU. The weights, the
optimizer and the loss reductions stay fp32 either way.

``NNUNET_MIM_AMP`` (bf16, fp16 or off) overrides the choice: the tests run both autocast paths on the
CPU with it, so that none of this code meets a GPU untried.
"""
import os
from typing import Optional

import torch

AMP_VARIABLE = "NNUNET_MIM_AMP"
CHOICES = {"bf16": torch.bfloat16, "fp16": torch.float16, "off": None}


def autocast_dtype(device: torch.device) -> Optional[torch.dtype]:
    """The dtype to autocast the forward to on ``device``; None for fp32 throughout."""
    choice = os.environ.get(AMP_VARIABLE)
    if choice:
        if choice not in CHOICES:
            raise ValueError(f"{AMP_VARIABLE}={choice!r}: give one of {', '.join(CHOICES)}")
        return CHOICES[choice]
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def describe(dtype: Optional[torch.dtype]) -> str:
    if dtype is None:
        return "mixed precision off (fp32)"
    scaler = " with a gradient scaler" if dtype == torch.float16 else " (no gradient scaler needed)"
    return f"mixed precision: {str(dtype).replace('torch.', '')} autocast{scaler}; weights and optimizer fp32"
