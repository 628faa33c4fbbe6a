"""MiM and MAE pre-training trainers and their variants, for ``nnUNetv2_train -tr``."""
from nnunet_mim.variants import trainers_named

# every pre-training trainer and the variants that variants.py generates
globals().update(trainers_named("nnUNetTrainerMiMPretrain", "nnUNetTrainerMAEPretrain"))
