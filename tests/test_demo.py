"""The README's first command, `nnunet-mim demo`, run whole through the CLI, with the smoke-sized
trainers instead of the demo's (the same steps: dataset, planning, pre-training, fine-tuning,
scratch, prediction, Dice; about 3 minutes on 2 cores)."""
import json
import os
import re

from helpers import nnunet_mim_in_process


def test_the_demo_runs_the_whole_job_and_reports_dice(tmp_path):
    users = {key: tmp_path / key for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")}
    for folder in users.values():
        folder.mkdir()
    env = dict(os.environ, **{key: str(folder) for key, folder in users.items()})
    env.pop("nnUNet_extTrainer", None)  # the demo finds its trainers without the user's setup
    work = tmp_path / "demo"
    args = ["demo", "--work-folder", str(work),
            "--pretrain-trainer", "nnUNetTrainerMiMPretrain_T_CPUsmoke",
            "--finetune-trainer", "nnUNetTrainerMiMFinetune_T_CPUsmoke",
            "--scratch-trainer", "nnUNetTrainerMiMScratch_T_CPUsmoke"]
    out = nnunet_mim_in_process(args, env).stdout
    assert "[7/7] predict held-out cases (scratch)" in out
    # the pre-training's health: every level's loss, both collapse monitors against their thresholds
    assert "reconstruction loss over 2 epochs (training, per level): L1 " in out and ", L3 " in out
    assert "collapse monitors at the last epoch: feature_std" in out and "target_std" in out
    # the printed Dice are the ones nnU-Net's evaluation wrote for each arm's predictions
    printed = dict(re.findall(r"^\| (MiM pre-trained, fine-tuned|same network from scratch) \|.*\| ([\d.]+) \|$",
                              out, flags=re.M))
    labels = sorted(os.listdir(work / "nnUNet_raw" / "Dataset990_MNIDemo" / "labelsTs"))
    for arm, trainer in [("MiM pre-trained, fine-tuned", "nnUNetTrainerMiMFinetune_T_CPUsmoke"),
                         ("same network from scratch", "nnUNetTrainerMiMScratch_T_CPUsmoke")]:
        predictions = work / "predictions" / trainer
        assert sorted(f for f in os.listdir(predictions) if f.endswith(".nii.gz")) == labels
        summary = json.load(open(predictions / "summary.json"))
        assert float(printed[arm]) == round(summary["foreground_mean"]["Dice"], 3)
    # fine-tuning started from the demo's own pre-training, and said so
    results = work / "nnUNet_results" / "Dataset990_MNIDemo"
    report = json.load(open(results / "nnUNetTrainerMiMFinetune_T_CPUsmoke__nnUNetPlans__3d_fullres" / "fold_all" /
                            "pretrained_weights_report.json"))
    assert report["checkpoint"] == str(results / "nnUNetTrainerMiMPretrain_T_CPUsmoke__nnUNetPlans__3d_fullres" /
                                       "fold_all" / "checkpoint_final.pth")
    assert all(not os.listdir(folder) for folder in users.values())  # the user's nnU-Net folders untouched
    again = nnunet_mim_in_process(args, env, check=False)
    assert again.returncode == 1 and "is not empty" in again.stderr and "Traceback" not in again.stderr
