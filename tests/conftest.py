import os
import subprocess

import pytest

from nnunet_mim.demo import nnunet_command
from nnunet_mim.environment import ext_trainer_value


def run(args, env, check=True):
    result = subprocess.run(args, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace")
    if check and result.returncode:
        raise AssertionError(f"{args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="session")
def nnunet_env(tmp_path_factory):
    from nnunet_mim.data.example import write_example_dataset
    root = tmp_path_factory.mktemp("nnunet")
    env = dict(os.environ, nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"),
               nnUNet_results=str(root / "res"), nnUNet_extTrainer=ext_trainer_value("", cpu_budgets=True),
               nnUNet_def_n_proc="1")  # export workers: spawning 8 on a 2-core machine costs a minute
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        os.makedirs(env[key])
    write_example_dataset(env["nnUNet_raw"], 991, num_train=5, num_test=1, spacing_mm=5.0, name="E2E")
    run([nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", "991", "-c", "3d_fullres", "-np", "1"], env)
    env["nnUNet_n_proc_DA"] = "0"
    return env


@pytest.fixture
def example_plans():
    """A minimal anisotropic nnU-Net plan (the shape of a real plans.json, trimmed)."""
    return {
        "dataset_name": "Dataset001_Test", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [3.0, 0.8, 0.8], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": [40, 224, 192], "median_image_size_in_voxels": [80, 400, 400],
            "spacing": [3.0, 0.8, 0.8], "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": {"strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]]},
                             "_kw_requires_import": []},
            "batch_dice": False}},
    }
