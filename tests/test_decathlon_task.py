"""The benchmark on a Medical Segmentation Decathlon task, given only its ID.

MSD data cannot be downloaded here, so a stand-in for Task04_Hippocampus is written in the MSD's
own layout (imagesTr/labelsTr/imagesTs, MSD dataset.json with "modality" and "training"): small
1 mm MR-like images of about 36x50x35 voxels with two adjacent labelled structures. nnU-Net's own
converter and planner turn it into Dataset004_Hippocampus, as they would the real download.
"""
import csv
import glob
import json
import os
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import nnunet_mim_in_process, run
from nnunet_mim.demo import nnunet_command

LABELS = {"0": "background", "1": "Anterior", "2": "Posterior"}


def write_msd_hippocampus_stand_in(folder, num_train: int = 10, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(folder, sub))
    cases = [f"hippocampus_{i:03d}" for i in range(num_train + 1)]
    for i, case in enumerate(cases):
        shape = rng.integers([33, 47, 32], [39, 54, 38])  # z, y, x
        grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
        centre = shape / 2 + rng.normal(0, 1.5, 3)

        def ellipsoid(offset, radii):
            return sum(((g - c - o) / r) ** 2 for g, c, o, r in zip(grid, centre, offset, radii)) <= 1

        label = np.zeros(shape, np.uint8)
        label[ellipsoid((0, 6, 0), (4, 6, 3))] = 2
        label[ellipsoid((0, -6, 0), (5, 7, 4))] = 1
        image = rng.normal(100, 20, shape) + 80 * (label > 0) + 40 * (label == 2)
        written = [("imagesTs" if i == num_train else "imagesTr", image.astype(np.float32))]
        if i < num_train:
            written.append(("labelsTr", label))
        for sub, array in written:
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing((1.0, 1.0, 1.0))
            sitk.WriteImage(itk, os.path.join(folder, sub, f"{case}.nii.gz"))
    msd_json = {"name": "Hippocampus", "description": "stand-in for MSD Task04 (synthetic)", "tensorImageSize": "3D",
                "modality": {"0": "MRI"}, "labels": LABELS, "numTraining": num_train, "numTest": 1,
                "training": [{"image": f"./imagesTr/{c}.nii.gz", "label": f"./labelsTr/{c}.nii.gz"}
                             for c in cases[:num_train]],
                "test": [f"./imagesTs/{cases[-1]}.nii.gz"]}
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump(msd_json, f)


@pytest.fixture(scope="module")
def hippocampus_env(nnunet_env, tmp_path_factory):
    source = tmp_path_factory.mktemp("msd") / "Task04_Hippocampus"
    write_msd_hippocampus_stand_in(str(source))
    planning = {k: v for k, v in nnunet_env.items() if k != "nnUNet_n_proc_DA"}  # planning fails with 0
    run([nnunet_command("nnUNetv2_convert_MSD_dataset"), "-i", str(source), "-np", "1"], planning)
    run([nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", "4", "-c", "3d_fullres", "-np", "1", "-npfp", "1"],
        planning)
    return nnunet_env


def test_benchmark_runs_on_a_decathlon_task_given_only_its_id(hippocampus_env, tmp_path):
    result = nnunet_mim_in_process(["benchmark", "4", "--budget", "smoke", "--arms", "scratch", "MiM", "--folds", "0",
                                    "--fractions", "0.25", "--device", "cpu", "--work-folder", str(tmp_path)],
                                   hippocampus_env)
    for arm in ("scratch", "MiM"):
        for name in ("Anterior", "Posterior", "mean"):
            assert f"| 25% | {name} | {arm} |" in result.stdout, (arm, name)
    # images this small give MiM single-token octants: said before the runs, under the table, in the log
    assert "WARNING (MiM pre-training): at patch [32, 32, 32]" in result.stdout.split("| labels |")[0]
    with open(tmp_path / "results" / "downstream.md") as f:
        assert "WARNING (MiM pre-training): at patch [32, 32, 32]" in f.read()
    plans = os.path.join(hippocampus_env["nnUNet_preprocessed"], "Dataset004_Hippocampus", "nnUNetPlans.json")
    with open(plans) as f:
        assert max(json.load(f)["configurations"]["3d_fullres"]["patch_size"]) < 64
    (log,) = glob.glob(str(tmp_path / "pretraining" / "nnUNet_results" / "Dataset004_Hippocampus" / "*" / "fold_all"
                           / "training_log_*.txt"))
    with open(log) as f:
        assert "WARNING: at patch [32, 32, 32] an L1 octant is [1, 1, 1] tokens" in f.read()
    # every run's learning curve is the pseudo-Dice (raw and EMA) nnU-Net logged in that run's checkpoint
    with open(tmp_path / "results" / "downstream_curves.csv") as f:
        curves = list(csv.DictReader(f))
    assert {r["arm"] for r in curves} == {"scratch", "MiM"}
    for arm, trainer in (("scratch", "nnUNetTrainerMiMScratch_T_CPUsmoke"),
                         ("MiM", "nnUNetTrainerMiMFinetune_T_CPUsmoke")):
        checkpoint = torch.load(tmp_path / "labels_025pct" / "nnUNet_results" / arm / "Dataset004_Hippocampus"
                                / f"{trainer}__nnUNetPlans__3d_fullres" / "fold_0" / "checkpoint_final.pth",
                                map_location="cpu", weights_only=False)
        for column, logged in (("pseudo_dice", "mean_fg_dice"), ("ema_pseudo_dice", "ema_fg_dice")):
            assert [float(r[column]) for r in curves if r["arm"] == arm] == \
                pytest.approx([float(v) for v in checkpoint["logging"][logged]])
    assert "| 25% | MiM | 1 | 1 |" in result.stdout  # the end-of-training table: one fold of one epoch
    assert os.path.isfile(tmp_path / "results" / "downstream_curves.png")
    # --report-only writes the same tables from the finished runs, and trains nothing
    with open(tmp_path / "benchmark.log") as f:
        log_before = f.read()
    nnunet_mim_in_process(["benchmark", "4", "--budget", "smoke", "--arms", "scratch", "MiM", "--folds", "0",
                           "--fractions", "0.25", "--device", "cpu", "--work-folder", str(tmp_path), "--report-only",
                           "--results-folder", str(tmp_path / "report")], hippocampus_env)
    for name in ("downstream_runs.csv", "downstream_curves.csv"):
        with open(tmp_path / "results" / name) as first, open(tmp_path / "report" / name) as report:
            assert report.read() == first.read(), name
    with open(tmp_path / "benchmark.log") as f:
        assert "nnUNetv2_train" not in f.read()[len(log_before):]


@pytest.mark.slow  # a second benchmark (stock ResEnc arm included); the harness itself runs in the test above
def test_benchmark_with_residual_encoder_plans(hippocampus_env, tmp_path):
    """-p: nnU-Net's recommended ResEnc presets (which share nnUNetPlans' preprocessed data) work as
    with nnUNetv2_train -p, for pre-training and for fine-tuning from its weights. (The stock arm
    takes the same path and would train their residual encoder U-Net: left out for time.)"""
    # nnU-Net's recommended ResEnc-M plans; they share the preprocessed data planned by the fixture
    planning = {k: v for k, v in hippocampus_env.items() if k != "nnUNet_n_proc_DA"}
    run([nnunet_command("nnUNetv2_plan_experiment"), "-d", "4", "-pl", "nnUNetPlannerResEncM"], planning)
    result = run([sys.executable, "-m", "nnunet_mim.cli", "benchmark", "4", "-p", "nnUNetResEncUNetMPlans",
                  "--budget", "smoke", "--arms", "scratch", "MAE", "--folds", "0", "--fractions", "0.25",
                  "--device", "cpu", "--work-folder", str(tmp_path)], hippocampus_env)
    assert "Dataset004_Hippocampus, nnUNetResEncUNetMPlans 3d_fullres" in result.stdout
    pretraining = (tmp_path / "pretraining" / "nnUNet_results" / "Dataset004_Hippocampus"
                   / "nnUNetTrainerMAEPretrain_T_CPUsmoke__nnUNetResEncUNetMPlans__3d_fullres")
    finetuned = (tmp_path / "labels_025pct" / "nnUNet_results" / "MAE" / "Dataset004_Hippocampus"
                 / "nnUNetTrainerMiMFinetune_T_CPUsmoke__nnUNetResEncUNetMPlans__3d_fullres")
    scratch = (tmp_path / "labels_025pct" / "nnUNet_results" / "scratch" / "Dataset004_Hippocampus"
               / "nnUNetTrainerMiMScratch_T_CPUsmoke__nnUNetResEncUNetMPlans__3d_fullres")
    for arm in ("scratch", "MAE"):
        assert f"| 25% | mean | {arm} |" in result.stdout
    for folder in (pretraining, finetuned, scratch):
        with open(folder / "plans.json") as f:
            assert json.load(f)["plans_name"] == "nnUNetResEncUNetMPlans", folder
    with open(finetuned / "fold_0" / "pretrained_weights_report.json") as f:
        assert json.load(f)["checkpoint"] == str(pretraining / "fold_all" / "checkpoint_final.pth")
