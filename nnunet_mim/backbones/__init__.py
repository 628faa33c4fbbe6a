"""Networks other than the hybrid that the pre-training methods train, one module each, and their registry.

A backbone is a trainer mixin in a module of its own: its ``pretraining_plans`` builds its pre-training network (a
masked forward that returns the token-wise prediction and token features) from the user's plan, and its
``backbone_levels`` puts the method's levels on its token grid. Every method of
nnunet_mim/methods.py gets a trainer on every backbone here, named ``<the method's trainer>_<backbone>`` (e.g.
``nnUNetTrainerMiMPretrain_ResEnc``), with its CPU budget variants (nnunet_mim/variants.py). The hybrid network is the
pre-training trainers' own (``nnUNetTrainerMiMPretrain.pretraining_plans``). A new backbone: its module and a line
below.
"""
from typing import Dict

from nnunet_mim.backbones.primus import PrimusBackbone
from nnunet_mim.backbones.resenc import ResEncBackbone

BACKBONES: Dict[str, type] = {"ResEnc": ResEncBackbone, "Primus": PrimusBackbone}
