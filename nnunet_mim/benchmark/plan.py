"""The plan of a benchmark: the dataset's plans and preprocessed data, its folds, the labelled cases of each
label fraction, the class names its scores are keyed by. Errors here say what to run first."""
import os
from typing import Dict, List, Mapping, Optional

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json


class BenchmarkError(RuntimeError):
    """Bad input or a failed run: a message the user can act on (the command prints it without a traceback)."""



def data_loading_note(environ: Mapping[str, str]) -> Optional[str]:
    """Said before the runs when they would load data in background processes: the arms are then
    seeded alike but their crops and augmentation are not the same (the workers are not seeded per
    run), so a difference between arms also holds data-order noise. None when loading is single-process."""
    if environ.get("nnUNet_n_proc_DA", "").strip() == "0":
        return None
    return ("NOTE: nnUNet_n_proc_DA is not 0, so nnU-Net loads training data in background processes: "
            "every arm starts from the same seed but sees other crops and augmentation, and a rerun does "
            "not repeat a run exactly. For identical data streams in every arm (slower on a GPU), set "
            "nnUNet_n_proc_DA=0 for the benchmark; docs/benchmarks.md ran its CPU tables so.")


def plans_file(dataset_name: str, plans: str) -> str:
    return os.path.join(os.environ["nnUNet_preprocessed"], dataset_name, plans + ".json")


def check_plans_file(dataset_name: str, plans: str) -> None:
    if not os.path.isfile(plans_file(dataset_name, plans)):
        raise BenchmarkError(f"{plans_file(dataset_name, plans)} not found: run nnUNetv2_plan_and_preprocess (or "
                             f"nnunet-mim pretrain-dataset create) for {dataset_name} first, or name the plans it has "
                             "with -p")


def preprocessed_data_folder(dataset_name: str, plans: str, configuration: str) -> str:
    """The folder of a dataset's preprocessed cases for one configuration of its plans; a
    BenchmarkError that says what to run when the plans, the configuration or the data are missing."""
    check_plans_file(dataset_name, plans)
    configurations = load_json(plans_file(dataset_name, plans))["configurations"]
    if configuration not in configurations:
        raise BenchmarkError(f"{plans} of {dataset_name} has no configuration {configuration!r}; "
                             f"it has {sorted(configurations)}")
    folder = os.path.join(os.environ["nnUNet_preprocessed"], dataset_name,
                          configurations[configuration]["data_identifier"])
    if not os.path.isdir(folder):
        raise BenchmarkError(f"{folder} not found: {dataset_name} is planned but not preprocessed for "
                             f"{configuration} (run nnUNetv2_preprocess on it with -c {configuration})")
    return folder


def cross_validation_splits(preprocessed_dataset: str, data_folder: str) -> List[dict]:
    """The folds nnU-Net trains a preprocessed dataset with: its splits_final.json, or the split
    nnU-Net makes when there is none (five folds, seed 12345)."""
    own = os.path.join(preprocessed_dataset, "splits_final.json")
    if os.path.isfile(own):
        return load_json(own)
    from nnunetv2.utilities.crossval_split import generate_crossval_split
    cases = sorted(f[:-len(".pkl")] for f in os.listdir(data_folder) if f.endswith(".pkl"))
    # nnU-Net's split holds numpy strings, which messages and the splits file would show as np.str_('case')
    return [{part: [str(case) for case in cases_of_part] for part, cases_of_part in split.items()}
            for split in generate_crossval_split(cases, seed=12345, n_splits=5)]


def label_fraction_splits(splits: List[dict], fraction: float, seed: int) -> List[dict]:
    """Per fold, the first round(fraction * n) training cases of a fixed permutation."""
    out = []
    for fold, split in enumerate(splits):
        order = np.random.default_rng(seed + fold).permutation(sorted(split["train"]))
        keep = max(1, int(round(fraction * len(order))))
        out.append({"train": sorted(order[:keep].tolist()), "val": [str(case) for case in split["val"]]})
    return out



def class_names(labels: Dict[str, object]) -> Dict[str, str]:
    """summary.json key -> class name from dataset.json "labels": nnU-Net keys a label by its
    value ("2") and a region by its tuple of labels ("(1, 2, 3)")."""
    from nnunetv2.evaluation.evaluate_predictions import label_or_region_to_key
    return {label_or_region_to_key(tuple(value) if isinstance(value, list) else value): name
            for name, value in labels.items()}
