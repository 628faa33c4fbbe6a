"""MiM and MAE pre-training trainers and their variants, for ``nnUNetv2_train -tr``."""
from nnunet_mim import variants

# every pre-training trainer and the variants that variants.py generates
globals().update({name: trainer for name, trainer in vars(variants).items()
                  if name.startswith(("nnUNetTrainerMiMPretrain", "nnUNetTrainerMAEPretrain"))})
