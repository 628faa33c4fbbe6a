from nnunet_mim.architecture.encoder import HybridEncoder
from nnunet_mim.architecture.network import MiMHybridUNet
from nnunet_mim.geometry import TOKEN_SIZE, check_patch_size
from nnunet_mim.architecture.presets import PRESETS, preset_kwargs

__all__ = ["TOKEN_SIZE", "HybridEncoder", "MiMHybridUNet", "check_patch_size", "PRESETS", "preset_kwargs"]
