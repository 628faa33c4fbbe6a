"""nnU-Net's own trainer at the CPU budgets of nnunet-mim (the reference arm of the benchmark)."""
from nnunet_mim.variants import trainers_named

globals().update(trainers_named("nnUNetTrainerStockCNN"))
