"""Adapting a dataset's nnU-Net plan to the hybrid network.

Everything nnU-Net planned (spacing, normalisation, batch size, augmentation, loss) stays; only
the architecture entry, the patch size and the pooling description change:

* ``architecture`` -> ``MiMHybridUNet`` with the preset's keywords, so ``nnUNetv2_predict``
  rebuilds the same network from the plans.json that training saves.
* ``patch_size`` -> each axis rounded *down* to a multiple of 16 (32 for MiM pre-training,
  whose L1 octants need an even token grid), never below one multiple. Rounding down keeps
  the patch inside nnU-Net's memory target; an anisotropic plan such as 40x224x192 becomes
  32x224x192 at the same spacing.
* ``arch_kwargs["strides"]`` -> one full-resolution level and four 2x poolings: nnU-Net reads
  it as ``pool_op_kernel_sizes`` and derives its deep-supervision scales (1, 1/2, 1/4, 1/8)
  from it.
"""
from copy import deepcopy
from typing import List, Sequence

from nnunet_mim.geometry import STRIDES
from nnunet_mim.architecture.presets import preset_kwargs

NETWORK_CLASS = "nnunet_mim.architecture.network.MiMHybridUNet"
PRETRAIN_NETWORK_CLASS = "nnunet_mim.pretraining.model.MiMPretrainNetwork"


def round_patch_size(patch_size: Sequence[int], multiple: int) -> List[int]:
    return [max(multiple, int(s) // multiple * multiple) for s in patch_size]


def planned_patch_size(plans: dict, configuration: str) -> List[int]:
    """The patch nnU-Net planned for ``configuration`` (an inherited configuration's from its parent); a
    ValueError naming the configurations there are, or saying the configuration is not 3D."""
    if configuration not in plans["configurations"]:
        raise ValueError(f"configuration {configuration!r} is not in the plans "
                         f"(available: {sorted(plans['configurations'])})")
    config = plans["configurations"][configuration]
    patch = config.get("patch_size") or plans["configurations"][config["inherits_from"]]["patch_size"]
    if len(patch) != 3:
        raise ValueError(f"nnunet-mim needs a 3D configuration; {configuration!r} has patch size {patch}")
    return list(patch)


def adapt_plans(plans: dict, configuration: str, preset: str, patch_multiple: int = 16,
                network_class: str = NETWORK_CLASS) -> dict:
    """A copy of ``plans`` whose ``configuration`` builds the hybrid network."""
    original = planned_patch_size(plans, configuration)
    plans = deepcopy(plans)
    config = plans["configurations"][configuration]
    config["patch_size"] = round_patch_size(original, patch_multiple)
    config["architecture"] = {"network_class_name": network_class,
                              "arch_kwargs": {**preset_kwargs(preset), "strides": STRIDES},
                              "_kw_requires_import": []}
    config["nnunet_mim"] = {"preset": preset, "planned_patch_size": list(original)}
    return plans
