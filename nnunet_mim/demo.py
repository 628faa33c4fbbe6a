"""``nnunet-mim demo``: the whole job on a small built-in example, through nnU-Net's own commands.

write dataset -> nnUNetv2_plan_and_preprocess -> MiM pre-training (labels unused)
-> fine-tuning from the pre-trained weights, and the matched from-scratch run
-> nnUNetv2_predict on held-out cases -> Dice against their reference labels.

Everything lives in one working folder; nnU-Net's environment variables are set for the child
processes only, so no dataset or result of the user's is read or written.
"""
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Dict, List, Optional

from tqdm import tqdm

from nnunet_mim.data.example import write_example_dataset
from nnunet_mim.data.templates import TEMPLATES
from nnunet_mim.environment import ext_trainer_value

DATASET_ID = 990
CONFIGURATION = "3d_fullres"


def nnunet_command(name: str) -> str:
    """The nnU-Net console script of the running interpreter's environment."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    found = beside if os.path.exists(beside) else shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found: is nnunetv2 installed in this environment?")
    return found


class Demo:
    def __init__(self, work_folder: str, pretrain_trainer: str, finetune_trainer: str, scratch_trainer: str):
        self.work = os.path.abspath(work_folder)
        self.trainers = {"pretrain": pretrain_trainer, "finetune": finetune_trainer, "scratch": scratch_trainer}
        self.env = dict(os.environ, nnUNet_raw=self.path("nnUNet_raw"),
                        nnUNet_preprocessed=self.path("nnUNet_preprocessed"),
                        nnUNet_results=self.path("nnUNet_results"),
                        nnUNet_extTrainer=ext_trainer_value(os.environ.get("nnUNet_extTrainer", ""), cpu_budgets=True),
                        # nnU-Net's default of 8 export workers costs a minute of process start-up
                        # per run on a small machine, for a handful of tiny cases
                        nnUNet_def_n_proc=os.environ.get("nnUNet_def_n_proc", "2"))
        self.env.pop("nnUNet_n_proc_DA", None)
        self.log = None

    def path(self, *parts: str) -> str:
        return os.path.join(self.work, *parts)

    def run(self, args: List[str], progress_total: Optional[int] = None, extra_env: Dict[str, str] = None) -> None:
        """Run one nnU-Net command, its output to the log; a bar over 'Epoch N' lines if asked."""
        self.log.write(f"\n$ {' '.join(args)}\n")
        self.log.flush()
        env = dict(self.env, **(extra_env or {}))
        bar = tqdm(total=progress_total, unit="epoch", leave=False, disable=progress_total is None)
        with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env) as proc:
            for line in proc.stdout:
                self.log.write(line)
                if re.search(r": Epoch \d+$", line.strip()):
                    bar.update(1)
        bar.close()
        if proc.returncode:
            raise RuntimeError(f"command failed ({proc.returncode}): {' '.join(args)}\nsee {self.log.name}")

    def train(self, trainer: str, epochs: int, pretrained: Optional[str] = None) -> str:
        args = [nnunet_command("nnUNetv2_train"), str(DATASET_ID), CONFIGURATION, "all", "-tr", trainer,
                "-device", "cpu"]
        if pretrained:
            args += ["-pretrained_weights", pretrained]
        # single-process data loading: on a 2-core machine workers only compete with training
        self.run(args, progress_total=epochs, extra_env={"nnUNet_n_proc_DA": "0"})
        return self.path("nnUNet_results", self.dataset_name, f"{trainer}__nnUNetPlans__{CONFIGURATION}", "fold_all")

    def predict(self, trainer: str) -> str:
        out = self.path("predictions", trainer)
        self.run([nnunet_command("nnUNetv2_predict"), "-i", self.path("nnUNet_raw", self.dataset_name, "imagesTs"),
                  "-o", out, "-d", str(DATASET_ID), "-c", CONFIGURATION, "-tr", trainer, "-f", "all",
                  "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"])
        return out

    def dice(self, prediction_folder: str) -> Dict[str, float]:
        from nnunetv2.evaluation.evaluate_predictions import compute_metrics_on_folder
        from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO
        summary = compute_metrics_on_folder(self.path("nnUNet_raw", self.dataset_name, "labelsTs"), prediction_folder,
                                            os.path.join(prediction_folder, "summary.json"), SimpleITKIO(),
                                            ".nii.gz", [1, 2], None, 1)
        return {"grey matter": summary["mean"][1]["Dice"], "white matter": summary["mean"][2]["Dice"],
                "mean": summary["foreground_mean"]["Dice"]}

    def __call__(self) -> Dict[str, Dict[str, float]]:
        from nnunet_mim import variants
        if os.path.exists(self.work) and not os.path.isdir(self.work):
            raise FileExistsError(f"{self.work} is a file, not a folder; choose another --work-folder")
        if os.path.exists(self.work) and os.listdir(self.work):
            raise FileExistsError(f"{self.work} is not empty; choose another --work-folder or delete it")
        os.makedirs(self.work, exist_ok=True)
        started = time.time()
        self.log = open(self.path("demo.log"), "w")
        steps = ["write the example dataset", "plan and preprocess (nnU-Net)", "MiM pre-training (no labels)",
                 "fine-tune from the pre-trained weights", "train the matched network from scratch",
                 "predict held-out cases (fine-tuned)", "predict held-out cases (scratch)"]
        step = iter(enumerate(steps, 1))

        def announce():
            i, name = next(step)
            print(f"[{i}/{len(steps)}] {name}  ({time.time() - started:.0f} s)", flush=True)

        announce()
        for sub in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
            os.makedirs(self.path(sub))
        self.dataset_name = write_example_dataset(self.path("nnUNet_raw"), DATASET_ID)["name"]
        print(f"      {TEMPLATES['mni152'].source_note}")
        announce()
        # two fingerprint processes, not nnU-Net's 8: each starts an interpreter that imports nnU-Net (seconds)
        self.run([nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", str(DATASET_ID), "-c", CONFIGURATION,
                  "-np", "2", "-npfp", "2"])
        epochs = {name: getattr(variants, self.trainers[name]).epochs for name in self.trainers}
        announce()
        pretrained = os.path.join(self.train(self.trainers["pretrain"], epochs["pretrain"]), "checkpoint_final.pth")
        from nnunet_mim.pretraining.health import health_lines
        for line in health_lines(pretrained):
            print(f"      {line}")
        announce()
        self.train(self.trainers["finetune"], epochs["finetune"], pretrained)
        announce()
        self.train(self.trainers["scratch"], epochs["scratch"])
        results = {}
        for arm in ("finetune", "scratch"):
            announce()
            results[arm] = self.dice(self.predict(self.trainers[arm]))
        self.log.close()
        print(f"done in {time.time() - started:.0f} s; log: {self.path('demo.log')}")
        return results


def format_results(results: Dict[str, Dict[str, float]]) -> str:
    rows = ["| arm | Dice grey matter | Dice white matter | mean |", "|---|---|---|---|"]
    names = {"finetune": "MiM pre-trained, fine-tuned", "scratch": "same network from scratch"}
    for arm, dice in results.items():
        rows.append(f"| {names[arm]} | {dice['grey matter']:.3f} | {dice['white matter']:.3f} | {dice['mean']:.3f} |")
    return "\n".join(rows)
