"""nnU-Net's own trainer at the CPU budgets of nnunet-mim (the reference arm of the benchmark)."""
from nnunet_mim.variants import nnUNetTrainerStockCNN_CPUdemo, nnUNetTrainerStockCNN_CPUsmoke  # noqa: F401
