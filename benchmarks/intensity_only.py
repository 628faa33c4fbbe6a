"""How far does intensity alone go on a dataset? The ceiling of any voxel-wise intensity rule.

    python benchmarks/intensity_only.py 992 993      # nnU-Net raw dataset IDs or names

Per case, intensities are z-scored (as nnU-Net's MR normalisation) and cut into 64 bins; each bin
gets the class most of its voxels have, counted over ALL training cases, and that rule labels
the same cases. Fitted on the cases it scores, it is an upper bound for intensity-only
labelling: where it reaches the networks' Dice the task is decided by intensity, and where it
stays far below, where a voxel lies (context) decides its class. Two rules: one labels every
voxel; the other is told which voxels are foreground and only picks their class (the ceiling of
telling the classes apart by intensity). Prints Dice per class and the mean over classes, pooled
over all voxels of all training cases.
"""
import argparse
import os
import sys

import numpy as np
import SimpleITK as sitk
from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_mim.benchmark import class_names

BINS = np.linspace(-4, 4, 63)  # 64 bins of z-scored intensity, the outer two open-ended


def read(path: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(path)).ravel()


def intensity_only_dice(folder: str) -> dict:
    meta = load_json(os.path.join(folder, "dataset.json"))
    ending, labels = meta["file_ending"], meta["labels"]
    if any(isinstance(v, list) for v in labels.values()):
        raise ValueError(f"{folder}: region-based labels are not supported")
    num_classes = max(labels.values()) + 1
    cases = sorted(f[:-len(ending)] for f in os.listdir(os.path.join(folder, "labelsTr")) if f.endswith(ending))
    bins, targets = [], []
    for case in cases:
        image = read(os.path.join(folder, "imagesTr", f"{case}_0000{ending}")).astype(np.float64)
        bins.append(np.digitize((image - image.mean()) / max(image.std(), 1e-8), BINS))
        targets.append(read(os.path.join(folder, "labelsTr", case + ending)).astype(np.int64))
    bins, targets = np.concatenate(bins), np.concatenate(targets)
    names = class_names(labels)
    results = {}
    for rule, voxels in (("all voxels", slice(None)), ("foreground given", targets > 0)):
        rule_bins, rule_targets = bins[voxels], targets[voxels]
        counts = np.zeros((len(BINS) + 1, num_classes), dtype=np.int64)
        np.add.at(counts, (rule_bins, rule_targets), 1)
        predictions = counts.argmax(1)[rule_bins]
        dice = {}
        for value in range(1, num_classes):
            overlap = np.sum((predictions == value) & (rule_targets == value))
            total = np.sum(predictions == value) + np.sum(rule_targets == value)
            dice[names[str(value)]] = 2 * overlap / total if total else float("nan")
        dice["mean"] = float(np.nanmean(list(dice.values())))
        results[rule] = dice
    return {"cases": len(cases), "dice": results}


def main() -> int:
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", help="nnU-Net raw dataset IDs or names (first channel used)")
    args = parser.parse_args()
    print("| dataset | cases | class | Dice, all voxels | Dice, foreground given |\n|---|---|---|---|---|")
    for dataset in args.datasets:
        name = maybe_convert_to_dataset_name(dataset)
        result = intensity_only_dice(os.path.join(nnUNet_raw, name))
        every, foreground = result["dice"]["all voxels"], result["dice"]["foreground given"]
        for cls in every:
            print(f"| {name} | {result['cases']} | {cls} | {every[cls]:.3f} | {foreground[cls]:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
