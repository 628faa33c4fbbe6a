"""Fine-tuning and matched from-scratch trainers and their variants, for ``nnUNetv2_train -tr``
and for ``nnUNetv2_predict``, which looks the trainer up by name."""
from nnunet_mim.variants import trainers_named

# every fine-tuning and scratch variant, the schedule variants that variants.py generates included
globals().update(trainers_named("nnUNetTrainerMiMFinetune", "nnUNetTrainerMiMScratch"))
