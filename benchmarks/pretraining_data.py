"""Pre-training data throughput: building a collection, and reading crops from it.

    python benchmarks/pretraining_data.py                 # 4 CT-sized volumes, -np 1 and 2
    python benchmarks/pretraining_data.py --volumes 8 --processes 1 2 4 --keep /tmp/collection

1. ``nnunet-mim pretrain-dataset create`` on CT-sized phantoms (512x512x300 voxels at
   0.8x0.8x1.5 mm, int16 NIfTI, like a typical abdominal CT) to the paper's 1.5x1.5x2.0 mm:
   volumes per minute, per process, and disk per volume; extrapolated to 1,000 and 10,000.
2. The pre-training loader (nnU-Net's loader with the images-only dataset, from nnU-Net's blosc2 files):
   crops per second in one process (one loader worker, one core), MiM's crops of twice the patch and
   MAE's of the patch, at each ``--loader-patches`` size; beside it the samples per second a GPU would
   consume with preset B, predicted from the step's model FLOPs (counted here, nnunet_mim/flops.py) at
   an assumed utilisation of an H100's measured bf16 matrix rate, and the cores that keep it fed. The
   GPU check measures the real rate (benchmarks/gpu_check.py).

Phantoms are not anatomy: intensities and noise are CT-like, so compression (disk) is roughly
right; reading and resampling cost depends on voxel counts only.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np


def write_volumes(folder: str, count: int, shape, spacing_zyx) -> None:
    import SimpleITK as sitk

    from nnunet_mim.data.phantom import ct_phantom
    os.makedirs(folder)
    rng = np.random.default_rng(0)
    for i in range(count):
        image = sitk.GetImageFromArray(ct_phantom(shape, rng))
        image.SetSpacing(list(spacing_zyx)[::-1])
        sitk.WriteImage(image, os.path.join(folder, f"ct_{i:03d}.nii.gz"))


# an H100's 8192^3 bf16 matrix product, as seen on the lent machines (device KINDS.md: 769-798 TFLOP/s)
H100_MATMUL_FLOPS = 790e12
ASSUMED_UTILISATION = (0.2, 0.4)


def flops_per_sample(method: str, patch) -> float:
    """Model FLOPs of one preset-B sample's forward and backward, fp32 on the CPU: one masked volume with as many
    visible tokens as every volume of the step is padded to, times the volumes per sample (the alignment heads,
    a few thousand FLOPs, left out)."""
    import math

    import torch

    from nnunet_mim.architecture import preset_kwargs
    from nnunet_mim.flops import count_flops
    from nnunet_mim.losses import reconstruction_loss
    from nnunet_mim.masking import LevelConfig
    from nnunet_mim.pretraining.memory import visible_tokens
    from nnunet_mim.pretraining.model import MiMPretrainNetwork
    levels = LevelConfig() if method == "MiM" else LevelConfig(num_levels=1, l1_mask_ratio=0.75)
    network = MiMPretrainNetwork(1, 2, alignment_pairs=0, **preset_kwargs("B"))
    grid = [p // 16 for p in patch]
    hidden = torch.zeros(1, math.prod(grid), dtype=torch.bool)
    hidden[:, visible_tokens(levels, grid):] = True
    hidden = hidden.view(1, *grid)
    volume = torch.randn(1, 1, *patch)

    def step():
        prediction, _ = network(volume, hidden)
        reconstruction_loss(prediction, volume, hidden, 16).backward()
    return sum(levels.volumes_per_crop) * count_flops(step)


def loader_throughput(dataset_folder: str, crop, crops: int) -> float:
    from nnunet_mim.pretraining.data import ImagesOnlyDataset
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.utilities.label_handling.label_handling import LabelManager
    images = os.path.join(dataset_folder, "nnUNetPlans_3d_fullres")
    dataset = ImagesOnlyDataset(images, ImagesOnlyDataset.get_identifiers(images))
    loader = nnUNetDataLoader(dataset, 1, crop, crop, LabelManager({"background": 0}, None),
                              oversample_foreground_percent=0.0, transforms=None)
    next(loader)  # first batch opens files
    started = time.perf_counter()
    for _ in range(crops):
        next(loader)
    return crops / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volumes", type=int, default=4)
    parser.add_argument("--shape", type=int, nargs=3, default=[300, 512, 512], metavar=("Z", "Y", "X"))
    parser.add_argument("--source-spacing", type=float, nargs=3, default=[1.5, 0.8, 0.8])
    parser.add_argument("--spacing", type=float, nargs=3, default=[2.0, 1.5, 1.5])
    parser.add_argument("--patch-size", type=int, nargs=3, default=[96, 96, 96])
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--crops", type=int, default=20)
    parser.add_argument("--loader-patches", type=int, nargs="+", default=[96, 128], help="cubic patch sides")
    parser.add_argument("--keep", default=None, help="work folder to keep (default: a temporary one)")
    args = parser.parse_args()

    work = args.keep or tempfile.mkdtemp(prefix="nnunet_mim_data_bench_")
    os.environ["nnUNet_preprocessed"] = os.path.join(work, "preprocessed")  # before nnunetv2 is imported
    os.environ.setdefault("nnUNet_raw", os.path.join(work, "raw"))
    os.environ.setdefault("nnUNet_results", os.path.join(work, "results"))
    for key in ("nnUNet_preprocessed", "nnUNet_raw", "nnUNet_results"):
        os.makedirs(os.environ[key], exist_ok=True)
    from nnunet_mim.data.collection import CollectionSettings, create

    sources = os.path.join(work, "sources")
    if not os.path.isdir(sources):
        print(f"writing {args.volumes} phantoms of {args.shape} voxels ...", file=sys.stderr)
        write_volumes(sources, args.volumes, args.shape, args.source_spacing)
    source_mb = sum(os.path.getsize(os.path.join(sources, f)) for f in os.listdir(sources)) / 2 ** 20 / args.volumes
    settings = CollectionSettings(spacing=args.spacing, patch_size=args.patch_size)
    rows = []
    for i, processes in enumerate(args.processes):
        summary = create(900 + i, f"Bench{processes}proc", [sources], settings, processes)
        minutes = summary["seconds"] / 60
        rows.append((processes, summary["done"], summary["seconds"], summary["done"] / minutes,
                     summary["done"] / minutes / processes, summary["bytes_total"] / summary["done"] / 2 ** 20,
                     summary["folder"]))
    print(f"\nCollection: {args.volumes} CT-sized phantoms {'x'.join(map(str, args.shape[::-1]))} voxels at "
          f"{args.source_spacing[::-1]} mm (x, y, z) -> {args.spacing[::-1]} mm; int16 NIfTI {source_mb:.0f} MiB each; "
          f"{os.cpu_count()} cores\n")
    print("| processes | volumes | seconds | volumes/min | volumes/min/process | MiB/volume | hours per 1,000 | "
          "GiB per 1,000 |")
    print("|---|---|---|---|---|---|---|---|")
    for processes, done, seconds, per_min, per_proc, mib, _ in rows:
        print(f"| {processes} | {done} | {seconds:.1f} | {per_min:.2f} | {per_proc:.2f} | {mib:.1f} | "
              f"{1000 / per_min / 60:.1f} | {mib * 1000 / 1024:.1f} |")
    low, high = ASSUMED_UTILISATION
    print(f"\nLoader, one worker (one core), no augmentation, against one H100 predicted at {low:.0%}-{high:.0%} of "
          f"its measured bf16 matrix rate ({H100_MATMUL_FLOPS / 1e12:.0f} TFLOP/s), preset B\n")
    print("| method | patch | crop | crops / s / core | model TFLOP / sample | H100 samples / s (predicted) | "
          "cores to keep it fed |")
    print("|---|---|---|---|---|---|---|")
    for side in args.loader_patches:
        for method, factor in (("MAE", 1), ("MiM", 2)):
            rate = loader_throughput(rows[0][-1], [factor * side] * 3, args.crops)
            flops = flops_per_sample(method, [side] * 3)
            gpu = [u * H100_MATMUL_FLOPS / flops for u in ASSUMED_UTILISATION]
            print(f"| {method} | {side}^3 | {factor * side}^3 | {rate:.2f} | {flops / 1e12:.2f} | "
                  f"{gpu[0]:.1f}-{gpu[1]:.1f} | {int(np.ceil(gpu[0] / rate))}-{int(np.ceil(gpu[1] / rate))} |",
                  flush=True)
    print(f"(work folder: {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
