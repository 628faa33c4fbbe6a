"""MiM and MAE pre-training trainers and their variants, for ``nnUNetv2_train -tr``."""
from nnunet_mim.pretraining.trainer import nnUNetTrainerMAEPretrain, nnUNetTrainerMiMPretrain  # noqa: F401
from nnunet_mim.variants import (  # noqa: F401
    nnUNetTrainerMAEPretrain_100ep, nnUNetTrainerMAEPretrain_S, nnUNetTrainerMAEPretrain_T_CPUbench,
    nnUNetTrainerMAEPretrain_T_CPUbench25, nnUNetTrainerMAEPretrain_T_CPUbench300, nnUNetTrainerMAEPretrain_T_CPUdemo,
    nnUNetTrainerMAEPretrain_T_CPUsmoke, nnUNetTrainerMiMPretrain_100ep, nnUNetTrainerMiMPretrain_S,
    nnUNetTrainerMiMPretrain_T_CPUbench, nnUNetTrainerMiMPretrain_T_CPUbench25, nnUNetTrainerMiMPretrain_T_CPUbench300,
    nnUNetTrainerMiMPretrain_T_CPUdemo, nnUNetTrainerMiMPretrain_T_CPUsmoke, nnUNetTrainerMiMPretrainNoAlign,
    nnUNetTrainerMiMPretrainNoAlign_100ep, nnUNetTrainerMiMPretrainNoAlign_T_CPUbench,
    nnUNetTrainerMiMPretrainNoAlign_T_CPUbench25, nnUNetTrainerMiMPretrainNoAlign_T_CPUbench300,
    nnUNetTrainerMiMPretrainNoAlign_T_CPUdemo, nnUNetTrainerMiMPretrainNoAlign_T_CPUsmoke)
