"""Every CPU budget trainer (nnunet_mim/variants.py, ``CPU_BUDGET_TRAINERS``), for ``nnUNetv2_train -tr``
and ``nnUNetv2_predict``."""
from nnunet_mim.variants import CPU_BUDGET_TRAINERS

globals().update(CPU_BUDGET_TRAINERS)
