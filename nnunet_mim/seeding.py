"""The seed of a run of an nnunet-mim trainer.

``nnUNetv2_train`` has no seed option, so our trainers read theirs from the environment:
``NNUNET_MIM_SEED``, 0 unless set. It seeds the network's initialisation, the crops and the
augmentation (and pre-training's masks): the same command with the same seed gives the same run
(exactly so with single-process data loading, nnUNet_n_proc_DA=0). ``nnunet-mim benchmark
--init-seed`` sets it for its fine-tuning runs, to see how much the random initialisation moves them.
"""
import os

import numpy as np
import torch

SEED_VARIABLE = "NNUNET_MIM_SEED"


def run_seed() -> int:
    value = os.environ.get(SEED_VARIABLE, "0").strip()
    if not value.isdigit():
        raise ValueError(f"{SEED_VARIABLE}={value!r}: the seed of nnunet-mim runs must be a whole number >= 0")
    return int(value)


def seed_generators(seed: int, rank: int) -> None:
    """numpy per rank (crop positions differ on every GPU), torch the same on every rank (the same
    initial weights everywhere)."""
    np.random.seed(seed + rank)
    torch.manual_seed(seed)
