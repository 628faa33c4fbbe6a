"""Fine-tuning and matched from-scratch trainers, their variants and schedules, for ``nnUNetv2_train -tr``
and for ``nnUNetv2_predict``, which looks the trainer up by name."""
from nnunet_mim.variants import FINETUNING_USER, by_name

globals().update(by_name(FINETUNING_USER))
