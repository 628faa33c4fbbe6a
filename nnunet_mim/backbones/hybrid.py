"""The project's own network as a backbone: the ConvMAE-style hybrid (nnunet_mim/architecture/) at a preset (T, S,
B), pre-trained through ``MiMPretrainNetwork`` (pretraining/model.py: visible tokens only, a light token decoder).

It is the default: the methods' trainers (``nnUNetTrainerMiMPretrain``, ``nnUNetTrainerMAEPretrain``, ...) mix it in
themselves, so they carry no backbone suffix; the other backbones' trainers put their mixin before it and override
each of these attributes. Its plan is the dataset's, with the hybrid network in place of nnU-Net's (plans.py), and its
memory is modelled (pretraining/memory.py), so the micro-batch is chosen for the device.
"""
from nnunet_mim.masking import LevelConfig
from nnunet_mim.plans import PRETRAIN_NETWORK_CLASS, adapt_plans


class HybridBackbone:
    description = "preset {preset}"
    encoder_preset = "B"
    memory_predicted = True  # pretraining/memory.py models this network: the micro-batch fits the device

    @property
    def network_preset(self) -> str:
        """What the checkpoint records as the pre-trained network (pretraining_record.py): the preset."""
        return self.encoder_preset

    @staticmethod
    def backbone_levels(levels: LevelConfig) -> LevelConfig:
        """The method's levels as they are: they were written for this network's 16^3 tokens."""
        return levels

    @classmethod
    def pretraining_plans(cls, plans: dict, configuration: str) -> dict:
        """The plan the pre-training network is built from (and nnU-Net saves): the dataset's, with the hybrid
        network (plans.py) and this trainer's alignment heads."""
        plans = adapt_plans(plans, configuration, cls.encoder_preset, cls.levels.patch_multiple, PRETRAIN_NETWORK_CLASS)
        plans["configurations"][configuration]["architecture"]["arch_kwargs"].update(cls.alignment_kwargs())
        return plans
