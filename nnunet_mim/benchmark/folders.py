"""Where each run of a benchmark lives inside its work folder, and the environment its nnU-Net command gets.

Each label fraction (and label seed) has its own nnUNet_preprocessed folder: links to the dataset's files and a
splits_final.json of its own. Each arm has its own results folder there (the fine-tuned arms share a trainer
name); a pre-trained arm's folder also names its pre-training, so runs of another pre-training are never reused,
while scratch and the stock arm, which do not depend on it, are shared."""
import os
from typing import Dict, Optional

from batchgenerators.utilities.file_and_folder_operations import load_json, save_json

from nnunet_mim.benchmark.arms import BUDGETS, SCRATCH_DEFAULT
from nnunet_mim.benchmark.plan import BenchmarkError, label_fraction_splits
from nnunet_mim.benchmark.spec import BenchmarkInputs, BenchmarkSpec
from nnunet_mim.environment import ext_trainer_value
from nnunet_mim.seeding import SEED_VARIABLE


class RunFolders:
    def __init__(self, spec: BenchmarkSpec, inputs: BenchmarkInputs):
        self.spec, self.inputs, self.budget = spec, inputs, BUDGETS[spec.budget]
        self.work = os.path.abspath(spec.work_folder)

    def fraction_env(self, fraction: float, arm: str, init_seed: Optional[int] = None) -> Dict[str, str]:
        """The environment of one arm's runs at a label fraction: the fraction's preprocessed folder, the arm's
        results folder. Seed 0 keeps the plain name that work folders from before seeds were named still use."""
        seed = self.spec.seed
        name = f"labels_{int(round(fraction * 100)):03d}pct" + (f"_seed{seed}" if seed else "")
        root = os.path.join(self.work, name)
        dataset = os.path.join(root, "nnUNet_preprocessed", self.inputs.dataset_name)
        splits = label_fraction_splits(self.inputs.base_splits, fraction, seed)
        if not os.path.isdir(dataset):
            os.makedirs(dataset)
            for entry in os.listdir(self.inputs.source):
                if entry != "splits_final.json":
                    os.symlink(os.path.join(self.inputs.source, entry), os.path.join(dataset, entry))
            save_json(splits, os.path.join(dataset, "splits_final.json"))
        elif load_json(os.path.join(dataset, "splits_final.json")) != splits:
            raise BenchmarkError(f"{root} holds runs on other label subsets than {self.inputs.dataset_name}'s "
                                 f"splits and seed {seed} give now (did its splits_final.json change?): use a new "
                                 "--work-folder")
        init_seed = self.spec.init_seeds[0] if init_seed is None else init_seed
        results = os.path.join(root, "nnUNet_results", self.results_name(arm, init_seed))
        return self.env(os.path.join(root, "nnUNet_preprocessed"), results, init_seed)

    def pretraining_env(self) -> Dict[str, str]:
        """Pre-training's environment: the user's preprocessed folders, read only; seed 0 whatever --init-seed
        says (one pre-training serves the runs of every seed)."""
        return self.env(os.environ["nnUNet_preprocessed"], os.path.join(self.work, "pretraining", "nnUNet_results"),
                        0)

    def pretraining_name(self, arm: str) -> str:
        """What a pre-trained arm was pre-trained with, as its results folders name it ("" for the other
        arms): nnunet-mim compare never averages runs of two pre-trainings as one arm."""
        return self.results_name(arm, 0) if arm in self.budget.pretrain or arm in self.inputs.given_weights else ""

    def results_name(self, arm: str, init_seed: int) -> str:
        """The arm's results folder: a pre-trained arm's names its pre-training (the budget's label, the given
        weights' digest, the pre-training dataset when it is not the benchmark's own); another --init-seed gets
        folders of its own (the stock arm's too: nnU-Net's trainer is not seeded, but the runs stay apart)."""
        init = f"_init{init_seed}" if init_seed else ""
        if arm == SCRATCH_DEFAULT:  # its trainer is the one of scratch at the default schedule: runs are shared
            return "scratch" + init
        if arm in self.inputs.given_weights:
            return f"{arm}_weights_{self.inputs.given_weights[arm].digest}" + init
        if arm not in self.budget.pretrain:
            return arm + init
        name = f"{arm}_{self.budget.pretrain_label}" if self.budget.pretrain_label else arm
        if self.inputs.pretrain_dataset_name != self.inputs.dataset_name:
            name += f"_pretrained_on_{self.inputs.pretrain_dataset_name}"
        return name + init

    @staticmethod
    def env(preprocessed: str, results: str, seed: int) -> Dict[str, str]:
        os.makedirs(results, exist_ok=True)
        return dict(os.environ, nnUNet_preprocessed=preprocessed, nnUNet_results=results,
                    nnUNet_extTrainer=ext_trainer_value(os.environ.get("nnUNet_extTrainer", ""), cpu_budgets=True),
                    **{SEED_VARIABLE: str(seed)})
