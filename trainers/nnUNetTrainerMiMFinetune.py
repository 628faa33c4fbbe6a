"""Fine-tuning and matched from-scratch trainers and their variants, for ``nnUNetv2_train -tr``
and for ``nnUNetv2_predict``, which looks the trainer up by name."""
from nnunet_mim.finetuning.trainer import nnUNetTrainerMiMFinetune, nnUNetTrainerMiMScratch  # noqa: F401
from nnunet_mim.variants import (  # noqa: F401
    nnUNetTrainerMiMFinetune_100ep, nnUNetTrainerMiMFinetune_250ep, nnUNetTrainerMiMFinetune_250ep_DecoderFirst,
    nnUNetTrainerMiMFinetune_250ep_LayerDecay, nnUNetTrainerMiMFinetune_DecoderFirst,
    nnUNetTrainerMiMFinetune_LayerDecay, nnUNetTrainerMiMFinetune_S, nnUNetTrainerMiMFinetune_T_CPUdemo,
    nnUNetTrainerMiMFinetune_T_CPUdemo_DecoderFirst, nnUNetTrainerMiMFinetune_T_CPUdemo_LayerDecay,
    nnUNetTrainerMiMFinetune_T_CPUlong, nnUNetTrainerMiMFinetune_T_CPUlong_DecoderFirst,
    nnUNetTrainerMiMFinetune_T_CPUlong_LayerDecay, nnUNetTrainerMiMFinetune_T_CPUsmoke,
    nnUNetTrainerMiMFinetune_T_CPUxlong,
    nnUNetTrainerMiMFinetune_T_CPUxlong_DecoderFirst, nnUNetTrainerMiMFinetune_T_CPUxlong_LayerDecay,
    nnUNetTrainerMiMFinetune_T_CPUxxlong,
    nnUNetTrainerMiMFinetune_T_CPUxxlong_DecoderFirst, nnUNetTrainerMiMFinetune_T_CPUxxlong_LayerDecay,
    nnUNetTrainerMiMScratch_100ep, nnUNetTrainerMiMScratch_DecoderFirst, nnUNetTrainerMiMScratch_LayerDecay,
    nnUNetTrainerMiMScratch_250ep, nnUNetTrainerMiMScratch_250ep_DecoderFirst, nnUNetTrainerMiMScratch_250ep_LayerDecay,
    nnUNetTrainerMiMScratch_S, nnUNetTrainerMiMScratch_T_CPUdemo, nnUNetTrainerMiMScratch_T_CPUdemo_DecoderFirst,
    nnUNetTrainerMiMScratch_T_CPUdemo_LayerDecay, nnUNetTrainerMiMScratch_T_CPUlong,
    nnUNetTrainerMiMScratch_T_CPUlong_DecoderFirst, nnUNetTrainerMiMScratch_T_CPUlong_LayerDecay,
    nnUNetTrainerMiMScratch_T_CPUsmoke, nnUNetTrainerMiMScratch_T_CPUxlong,
    nnUNetTrainerMiMScratch_T_CPUxlong_DecoderFirst, nnUNetTrainerMiMScratch_T_CPUxlong_LayerDecay,
    nnUNetTrainerMiMScratch_T_CPUxxlong,
    nnUNetTrainerMiMScratch_T_CPUxxlong_DecoderFirst, nnUNetTrainerMiMScratch_T_CPUxxlong_LayerDecay)
