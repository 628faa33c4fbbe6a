"""The networks the pre-training methods train, one module each, and their registry.

A backbone is a trainer mixin in a module of its own, which says:
  description          one line of `nnunet-mim trainers` ({preset}: the trainer's encoder_preset)
  network_preset       what checkpoints record as the pre-trained network (pretraining_record.PRESET_CODES)
  memory_predicted     whether pretraining/memory.py models its step (else the plan's batch runs as planned)
  backbone_levels      the method's levels (masking.LevelConfig) on its token grid
  pretraining_plans    the user's plan with its pre-training network (a masked forward returning the token-wise
                       prediction and token features) in place of nnU-Net's

The hybrid (``DEFAULT``) is mixed into the methods' trainers themselves (pretraining/trainer.py). Every other method
of nnunet_mim/methods.py gets a trainer on every other backbone, named ``<the method's trainer>_<backbone>`` (e.g.
``nnUNetTrainerMiMPretrain_ResEnc``), with its CPU budget variants (nnunet_mim/variants.py), its mixin first. A new
backbone: its module and a line below.
"""
from typing import Dict

from nnunet_mim.backbones.hybrid import HybridBackbone
from nnunet_mim.backbones.primus import PrimusBackbone
from nnunet_mim.backbones.resenc import ResEncBackbone

# what each backbone's mixin defines itself: another backbone's trainer would otherwise inherit the hybrid's
INTERFACE = ("description", "network_preset", "memory_predicted", "backbone_levels", "pretraining_plans")
DEFAULT = "Hybrid"
BACKBONES: Dict[str, type] = {"Hybrid": HybridBackbone, "ResEnc": ResEncBackbone, "Primus": PrimusBackbone}
