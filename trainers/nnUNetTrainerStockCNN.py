"""nnU-Net's own trainer at the CPU budgets of nnunet-mim (the reference arm of the benchmark)."""
from nnunet_mim import variants

globals().update({name: trainer for name, trainer in vars(variants).items()
                  if name.startswith("nnUNetTrainerStockCNN")})
