"""Every trainer of nnunet-mim is found by nnU-Net's own lookup through nnUNet_extTrainer (the
path nnUNetv2_train and nnUNetv2_predict use), so no variant can be forgotten in trainers/."""
import json
import os
import re
import subprocess
import sys

import nnunet_mim.variants as variants
from helpers import nnunet_mim_in_process, python_in_process
from nnunet_mim.environment import cpu_budget_trainers_path, trainers_path

# one process for every lookup (nnU-Net reads nnUNet_extTrainer when it looks): a list of (folders, names),
# answered with the names not found under each
LOOKUP = """
import contextlib, io, json, os
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
unfound = []
for folders, names in json.loads(REQUEST):
    os.environ["nnUNet_extTrainer"] = os.pathsep.join(folders)
    missing = []
    for name in names:
        with contextlib.redirect_stdout(io.StringIO()):
            try:
                cls = recursive_find_trainer_class_by_name(name)
                assert cls.__module__.startswith("nnunet_mim."), cls.__module__  # defined once, in the library
            except Exception:
                missing.append(name)
    unfound.append(missing)
print(json.dumps(unfound))
"""


def unfound(*lookups) -> list:
    """Per (names, folders): the names nnU-Net's lookup does not find with those folders as nnUNet_extTrainer."""
    request = json.dumps([[list(folders), list(names)] for names, folders in lookups])
    out = python_in_process(f"REQUEST = {request!r}\n" + LOOKUP, dict(os.environ))
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_every_trainer_is_found_by_nnunet_the_cpu_budgets_only_in_their_folder():
    defined = {n for n in dir(variants)
               if n.startswith("nnUNetTrainer") and getattr(variants, n).__module__.startswith("nnunet_mim.")}
    assert set(variants.USER_TRAINERS) | set(variants.CPU_BUDGET_TRAINERS) == defined  # none forgotten
    assert not set(variants.USER_TRAINERS) & set(variants.CPU_BUDGET_TRAINERS)
    budgets = ["nnUNetTrainerMiMPretrain_T_CPUbench", "nnUNetTrainerMiMFinetune_T_CPUxlong_DecoderFirst",
               "nnUNetTrainerStockCNN_CPUlong"]
    outside, users, all_budgets = unfound((budgets, [trainers_path()]), (variants.USER_TRAINERS, [trainers_path()]),
                                          (variants.CPU_BUDGET_TRAINERS, [trainers_path(), cpu_budget_trainers_path()]))
    assert outside == budgets  # a user's nnUNet_extTrainer does not list them
    assert users == [] and all_budgets == []


def test_trainer_list_names_what_users_run_and_no_cpu_budget():
    out = nnunet_mim_in_process(["trainers"], dict(os.environ)).stdout
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  nnUNetTrainer")]
    assert len(listed) == len(set(listed)) and not [n for n in listed if "CPU" in n]
    assert {"nnUNetTrainerMiMPretrain", "nnUNetTrainerMAEPretrain", "nnUNetTrainerMiMPretrainNoAlign",
            "nnUNetTrainerMiMFinetune", "nnUNetTrainerMiMFinetune_250ep_DecoderFirst"} <= set(listed)
    assert set(listed) <= set(variants.USER_TRAINERS)
    # every user trainer is listed, the scratch twins by the line that names them
    assert {n.replace("Scratch", "Finetune") for n in variants.USER_TRAINERS} == set(listed)
    assert re.search(r"\n  nnUNetTrainerMiMPretrain_100ep +MiM pre-training \(1\+4\+16 volumes per crop\), preset B, "
                     r"100 epochs", out)
    assert re.search(r"\n  nnUNetTrainerMiMPretrain_Primus_Sub122 +MiM pre-training \(1\+2\+2 volumes per crop\), "
                     r"Primus-M", out)


def test_env_line_names_the_trainers_and_says_nothing_else():
    """``eval "$(nnunet-mim env)"`` runs in every shell a user sets up: its line must name the trainers'
    folder, and nothing may reach the terminal beside it (timm's import warned on every call)."""
    out = subprocess.run([sys.executable, "-m", "nnunet_mim.cli", "env"], capture_output=True, text=True, check=True)
    assert trainers_path() in out.stdout
    assert out.stderr == ""


def test_every_finetuning_variant_has_a_matched_scratch_twin():
    """Scratch is the baseline of every fine-tuning variant (budget, preset, schedule): each
    ``nnUNetTrainerMiMFinetune_X`` has an ``nnUNetTrainerMiMScratch_X`` with the same settings."""
    from nnunet_mim.finetuning.trainer import nnUNetTrainerMiMFinetune, nnUNetTrainerMiMScratch
    from nnunet_mim.run_length import RunLengthFromClassAttributes
    settings = [k for owner in (nnUNetTrainerMiMFinetune, RunLengthFromClassAttributes) for k, v in vars(owner).items()
                if not k.startswith("_") and not callable(v) and not isinstance(v, property)]
    assert {"epochs", "encoder_preset", "peak_lr", "layer_decay", "encoder_frozen_fraction"} <= set(settings)
    pairs = {n: getattr(variants, n.replace("Finetune", "Scratch"), None)
             for n in dir(variants) if n.startswith("nnUNetTrainerMiMFinetune_")}
    assert len(pairs) > 15
    assert [n for n, twin in pairs.items() if twin is None] == []
    for name, twin in pairs.items():
        finetune = getattr(variants, name)
        assert issubclass(twin, nnUNetTrainerMiMScratch)
        assert {k: getattr(twin, k) for k in settings} == {k: getattr(finetune, k) for k in settings}, name


def test_a_settings_class_may_not_set_what_each_method_owns():
    """The trap of issue 62: levels set in a variant shared by MiM and MAE crashed MAE with a bare IndexError."""
    import pytest

    from nnunet_mim.masking import LevelConfig
    from nnunet_mim.pretraining.trainer import nnUNetTrainerMAEPretrain, nnUNetTrainerMiMPretrain
    from nnunet_mim.variants import add_variants

    class FourLevels:
        levels = LevelConfig(l3_per_l2=2)
    with pytest.raises(TypeError, match="settings FourLevels .variant _L. sets levels, which each method owns"):
        add_variants([nnUNetTrainerMiMPretrain, nnUNetTrainerMAEPretrain], {"L": FourLevels})


def test_the_method_registry_names_what_it_knows_when_asked_for_what_it_does_not():
    import pytest

    from nnunet_mim.benchmark import ARMS, BUDGETS
    from nnunet_mim.methods import METHODS, method, trainer_class
    from nnunet_mim.pretraining_record import PretrainingRecord
    from nnunet_mim.variants import USER_TRAINERS
    with pytest.raises(ValueError, match="unknown pre-training method 'BYOL'; known: MAE, MiM, MiM-noalign"):
        method("BYOL")
    with pytest.raises(ValueError, match="no checkpoint record code for method 'BYOL'.*add one to RECORD_CODES"):
        PretrainingRecord("BYOL", "T", False, 1, (32, 32, 32), (1.0, 1.0, 1.0), 1).to_tensor()
    # every registered method is a benchmark arm, at every budget, and a trainer users can run
    for m in METHODS.values():
        assert m.name in ARMS and all(budget.pretrain[m.name].startswith(m.trainer) for budget in BUDGETS.values())
        assert trainer_class(m).__name__ == m.trainer and m.trainer in USER_TRAINERS
