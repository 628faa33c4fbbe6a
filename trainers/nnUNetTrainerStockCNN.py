"""nnU-Net's own trainer at the CPU budgets of nnunet-mim (the reference arm of the benchmark)."""
from nnunet_mim.variants import (  # noqa: F401
    nnUNetTrainerStockCNN_CPUdemo, nnUNetTrainerStockCNN_CPUlong, nnUNetTrainerStockCNN_CPUsmoke,
    nnUNetTrainerStockCNN_CPUxlong, nnUNetTrainerStockCNN_CPUxxlong)
