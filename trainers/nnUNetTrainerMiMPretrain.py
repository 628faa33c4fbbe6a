"""MiM and MAE pre-training trainers and their variants, for ``nnUNetv2_train -tr``."""
from nnunet_mim.variants import PRETRAINING_USER, by_name

globals().update(by_name(PRETRAINING_USER))
