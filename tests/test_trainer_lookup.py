"""Every trainer of nnunet-mim is found by nnU-Net's own lookup through nnUNet_extTrainer (the
path nnUNetv2_train and nnUNetv2_predict use), so no variant can be forgotten in trainers/."""
import os
import subprocess
import sys

import nnunet_mim.variants as variants
from nnunet_mim.environment import trainers_path

LOOKUP = """
import contextlib, io, sys
from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name
missing = []
for name in sys.argv[1:]:
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            cls = recursive_find_trainer_class_by_name(name)
            assert cls.__module__.startswith("nnunet_mim."), cls.__module__  # defined once, in the library
        except Exception as e:
            missing.append(f"{name}: {e}")
print("\\n".join(missing))
"""


def test_every_trainer_is_found_by_nnunet():
    names = [n for n in dir(variants)
             if n.startswith("nnUNetTrainer") and getattr(variants, n).__module__.startswith("nnunet_mim.")]
    assert len(names) > 20
    env = dict(os.environ, nnUNet_extTrainer=trainers_path())
    out = subprocess.run([sys.executable, "-c", LOOKUP, *names], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


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
    settings = [k for k, v in vars(nnUNetTrainerMiMFinetune).items() if not k.startswith("_") and not callable(v)
                and not isinstance(v, property)]
    assert {"epochs", "encoder_preset", "peak_lr", "layer_decay", "encoder_frozen_fraction"} <= set(settings)
    pairs = {n: getattr(variants, n.replace("Finetune", "Scratch"), None)
             for n in dir(variants) if n.startswith("nnUNetTrainerMiMFinetune_")}
    assert len(pairs) > 15
    assert [n for n, twin in pairs.items() if twin is None] == []
    for name, twin in pairs.items():
        finetune = getattr(variants, name)
        assert issubclass(twin, nnUNetTrainerMiMScratch)
        assert {k: getattr(twin, k) for k in settings} == {k: getattr(finetune, k) for k in settings}, name
