"""Pre-training memory: the prediction (nnunet_mim/pretraining/memory.py) against the bytes a real step saves
for its backward, and what the channel norm saves, on the CPU under bf16 autocast (the GPU's policy).

    python benchmarks/memory.py                 # preset B: MAE 96^3 and 128^3, MiM 64^3, an anisotropic MAE patch
    python benchmarks/memory.py --preset T      # seconds

The prediction is fitted on one volume at the reference patches (32^3, 32x32x64); every row here is another
size or shape, and MiM's rows are whole 21-volume steps. CUDA's own peak against the prediction is the GPU
check's (benchmarks/gpu_check.py). ``nnunet-mim pretrain-plan`` prints what each GPU size then gets.
"""
import argparse

import torch
from dynamic_network_architectures.building_blocks.patch_encode_decode import LayerNormNd

from nnunet_mim.architecture import preset_kwargs
from nnunet_mim.architecture.blocks import ChannelLayerNorm, MaskedConvBlock
from nnunet_mim.masking import LevelConfig, build_levels
from nnunet_mim.pretraining.memory import predict_step
from nnunet_mim.pretraining.model import MiMPretrainNetwork
from nnunet_mim.pretraining.objective import mim_objective

METHODS = {"MiM": LevelConfig(), "MAE": LevelConfig(num_levels=1, l1_mask_ratio=0.75)}


def saved_bytes(step) -> int:
    """Every storage autograd keeps for the backward of ``step()``, counted once."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        step()
    return sum(storages.values())


def step_saved_bytes(preset: str, method: str, patch) -> int:
    levels_config = METHODS[method]
    network = MiMPretrainNetwork(1, 2, alignment_pairs=2 if method == "MiM" else 0, **preset_kwargs(preset))
    crops = torch.randn(1, 1, *[p * levels_config.crop_factor for p in patch])
    levels = build_levels(crops, levels_config, torch.Generator().manual_seed(0))
    weights, alignment = ((1.0, 1.0, 1.0), 0.1) if method == "MiM" else ((1.0,), 0.0)
    return saved_bytes(lambda: mim_objective(network, network.alignment, levels, 16, weights, alignment))


def block_saved_bytes(norm: type, channels: int = 48, side: int = 16) -> float:
    """Bytes per voxel a stage-1 conv block saves, with ``norm`` as its channel norm."""
    block = MaskedConvBlock(channels)
    block.norm1, block.norm2 = norm(channels), norm(channels)
    x = torch.randn(1, channels, side, side, side, requires_grad=True)
    return saved_bytes(lambda: block(x, torch.ones(1, 1, side, side, side))) / side ** 3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="B")
    args = parser.parse_args()
    rows = ([("MAE", (96, 96, 96)), ("MAE", (128, 128, 128)), ("MiM", (64, 64, 64)), ("MAE", (64, 192, 160))]
            if args.preset == "B" else [("MAE", (64, 64, 64)), ("MiM", (64, 64, 64)), ("MiM", (32, 64, 96))])
    print(f"preset {args.preset}, one sample, bf16 autocast on the CPU\n")
    print("| method | patch | volumes | saved, measured (GB) | saved, predicted (GB) | predicted / measured |")
    print("|---|---|---|---|---|---|")
    for method, patch in rows:
        measured = step_saved_bytes(args.preset, method, patch)
        predicted = predict_step(preset_kwargs(args.preset), METHODS[method], patch, 1)
        print(f"| {method} | {'x'.join(map(str, patch))} | {predicted.volumes} | {measured / 1e9:.3f} | "
              f"{predicted.saved / 1e9:.3f} | {predicted.saved / measured:.3f} |", flush=True)
    before, after = block_saved_bytes(LayerNormNd), block_saved_bytes(ChannelLayerNorm)
    print(f"\nA stage-1 conv block (48 channels) saves {before:.0f} bytes per voxel with dynamic-network-"
          f"architectures' LayerNormNd and {after:.0f} with ChannelLayerNorm ({1 - after / before:.0%} less).")


if __name__ == "__main__":
    main()
