"""Where nnU-Net must look for our trainers, and a check that it does."""
import os
from typing import List

import nnunet_mim.cpu_budget_trainers
import nnunet_mim.trainers

TRAINERS = ["nnUNetTrainerMiMPretrain", "nnUNetTrainerMAEPretrain", "nnUNetTrainerMiMFinetune",
            "nnUNetTrainerMiMScratch"]


def trainers_path() -> str:
    return os.path.dirname(os.path.abspath(nnunet_mim.trainers.__file__))


def cpu_budget_trainers_path() -> str:
    return os.path.dirname(os.path.abspath(nnunet_mim.cpu_budget_trainers.__file__))


def ext_trainer_value(current: str = None, cpu_budgets: bool = False) -> str:
    """``nnUNet_extTrainer`` with our trainer folder added, and with ``cpu_budgets`` the CPU budgets' folder
    (each kept once, other entries preserved)."""
    current = os.environ.get("nnUNet_extTrainer", "") if current is None else current
    entries = [p for p in current.split(os.pathsep) if p]
    for folder in [trainers_path()] + ([cpu_budget_trainers_path()] if cpu_budgets else []):
        if folder not in entries:
            entries.append(folder)
    return os.pathsep.join(entries)


def env_lines(cpu_budgets: bool = False) -> List[str]:
    return [f'export nnUNet_extTrainer="{ext_trainer_value(cpu_budgets=cpu_budgets)}"']


def check() -> List[str]:
    """Problems that stop nnU-Net from finding or running our trainers; empty when all is well."""
    problems = []
    value = os.environ.get("nnUNet_extTrainer")
    entries = [os.path.abspath(p) for p in (value or "").split(os.pathsep) if p]
    if trainers_path() not in entries:
        problems.append(
            f"nnUNet_extTrainer ({'not set' if value is None else repr(value)}) does not contain the "
            f"nnunet-mim trainer folder {trainers_path()}. Run:\n    eval \"$(nnunet-mim env)\"\n"
            "(or add that line to your shell profile) so that nnUNetv2_train and nnUNetv2_predict find "
            f"{', '.join(TRAINERS)}.")
    for entry in entries:
        if not os.path.isdir(entry):
            problems.append(f"nnUNet_extTrainer entry {entry} does not exist")
    if not problems:
        from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
        for name in TRAINERS:
            try:
                recursive_find_trainer_class_by_name(name)
            except Exception as e:  # report every trainer, not just the first failure
                problems.append(f"nnU-Net cannot load {name}: {e}")
    for var in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        if var not in os.environ:
            problems.append(f"{var} is not set (nnU-Net needs it for training; `nnunet-mim demo` does not)")
    return problems
