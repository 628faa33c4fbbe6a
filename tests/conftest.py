import os

# Two workers, each of whose nnU-Net runs takes both cores (nnUNetv2_train sets as many torch threads as
# cores): OpenMP threads that wait sleep instead of spinning on a core the other worker needs. Set before
# torch starts its thread pool here, and inherited by every process the tests start.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

from helpers import run
from nnunet_mim.demo import nnunet_command
from nnunet_mim.environment import ext_trainer_value


# The README runs the suite on two xdist workers, a file per worker at a time (--dist loadfile), in
# collection order (--no-loadscope-reorder): the longest files go first, two to each worker, so that
# neither is left with a long one at the end
LONGEST_FILES_FIRST = ["test_end_to_end.py", "test_demo.py", "test_distributed.py", "test_decathlon_task.py",
                       "test_benchmark.py", "test_collection.py", "test_backbones.py", "test_losses.py",
                       "test_pretraining_recipe.py"]


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.path.name
        return LONGEST_FILES_FIRST.index(name) if name in LONGEST_FILES_FIRST else len(LONGEST_FILES_FIRST)
    items.sort(key=rank)  # stable: the tests of a file keep their order


@pytest.fixture(scope="session")
def nnunet_env(tmp_path_factory, worker_id):
    """Dataset991_E2E planned and preprocessed once per run: the xdist workers share the raw and preprocessed
    folders (the first to get here builds them while the other waits); each has its own results folder."""
    import fcntl
    from nnunet_mim.data.example import write_example_dataset
    base = tmp_path_factory.getbasetemp()
    shared = base if worker_id == "master" else base.parent  # this run's folder, above the workers' own
    env = dict(os.environ, nnUNet_raw=str(shared / "nnunet_raw"), nnUNet_preprocessed=str(shared / "nnunet_pre"),
               nnUNet_results=str(tmp_path_factory.mktemp("nnunet_results")),
               nnUNet_extTrainer=ext_trainer_value("", cpu_budgets=True),
               nnUNet_def_n_proc="1")  # export workers: spawning 8 on a 2-core machine costs a minute
    with open(shared / "nnunet_planning.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes
        if not (shared / "nnunet_planned").exists():
            for key in ("nnUNet_raw", "nnUNet_preprocessed"):
                os.makedirs(env[key])
            write_example_dataset(env["nnUNet_raw"], 991, num_train=5, num_test=1, spacing_mm=5.0, name="E2E")
            # one fingerprint process, not nnU-Net's 8: each one starts an interpreter that imports nnU-Net
            run([nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", "991", "-c", "3d_fullres", "-np", "1",
                 "-npfp", "1"], env)
            (shared / "nnunet_planned").touch()
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
