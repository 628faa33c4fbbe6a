from nnunet_mim.architecture.encoder import TOKEN_SIZE, HybridEncoder
from nnunet_mim.architecture.network import MiMHybridUNet, check_patch_size
from nnunet_mim.architecture.presets import PRESETS, preset_kwargs

__all__ = ["TOKEN_SIZE", "HybridEncoder", "MiMHybridUNet", "check_patch_size", "PRESETS", "preset_kwargs"]
