"""``nnunet-mim benchmark``: does pre-training help on this dataset, and by how much?

For one preprocessed nnU-Net dataset, label fractions and folds, it trains five arms with the
same plan, budget, seeds and folds, through nnU-Net's own commands:

    nnU-Net      stock nnUNetTrainer (the reference CNN), same budget
    scratch      nnUNetTrainerMiMScratch: the hybrid network from random weights
    MAE          MAE self pre-training, then nnUNetTrainerMiMFinetune
    MiM          MiM self pre-training, then nnUNetTrainerMiMFinetune
    MiM-noalign  MiM without cross-level alignment (ablation), then fine-tuning

and, when asked for with --schedule, scratch-default: scratch at the default schedule, the
random network at its own schedule beside the matched one (every arm's mean Dice is compared
with it too, in a second table under the main one).

Self pre-training uses the images of all training cases (labels never), once per method;
``--pretrain-dataset`` pre-trains on another planned dataset instead (e.g. a collection made with
``nnunet-mim pretrain-dataset create``); ``--pretrained-weights ARM=FILE`` fine-tunes that arm from a
checkpoint you already have instead of pre-training it.
``--schedule`` fine-tunes scratch and the pre-trained arms with one schedule variant (SCHEDULES).
``-p`` names the plans (nnUNetPlans unless given, e.g. nnUNetResEncUNetMPlans): the stock arm trains
the network they describe, the hybrid arms take their patch size and spacing.
Label fraction f keeps, in every fold, the first round(f * n) training cases of a fixed
per-fold permutation (so 10% is inside 25% is inside 100%); validation cases are unchanged.
Each fraction gets its own nnUNet_preprocessed folder (links to the dataset's files plus its own
splits_final.json) and one results folder per arm inside the work folder (the fine-tuned arms
share a trainer name): the user's folders are only read.
Scores are nnU-Net's own final validation (fold_k/validation/summary.json).
"""
import csv
import hashlib
import os
import re
import subprocess
import textwrap
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json, save_json

from nnunet_mim.checkpointing import CHECKPOINTS
from nnunet_mim.demo import nnunet_command
from nnunet_mim.finetuning.checkpoint import load_checkpoint, pretraining_checkpoint_record
from nnunet_mim.environment import ext_trainer_value
from nnunet_mim.learning_curves import curve_rows
from nnunet_mim.seeding import SEED_VARIABLE


@dataclass(frozen=True)
class Budget:
    stock: str
    scratch: str
    finetune: str
    pretrain: Dict[str, str]  # method -> pre-training trainer
    # names the pre-trained arms' results folders when this budget fine-tunes like another one but
    # pre-trains otherwise, so one work folder never reuses fine-tuned runs of the other pre-training
    pretrain_label: str = ""


def pretraining_trainers(variant: str) -> Dict[str, str]:
    """method -> pre-training trainer of one variant suffix (nnunet_mim/variants.py), e.g. "_100ep"."""
    return {"MAE": f"nnUNetTrainerMAEPretrain{variant}", "MiM": f"nnUNetTrainerMiMPretrain{variant}",
            "MiM-noalign": f"nnUNetTrainerMiMPretrainNoAlign{variant}"}


def cpu_finetuning_trainers(variant: str) -> Tuple[str, str, str]:
    """(stock, scratch, fine-tuning) trainers of one CPU fine-tuning budget (nnunet_mim/variants.py), e.g. "CPUlong"."""
    return (f"nnUNetTrainerStockCNN_{variant}", f"nnUNetTrainerMiMScratch_T_{variant}",
            f"nnUNetTrainerMiMFinetune_T_{variant}")


BUDGETS = {
    "smoke": Budget(*cpu_finetuning_trainers("CPUsmoke"), pretraining_trainers("_T_CPUsmoke")),
    "cpu": Budget(*cpu_finetuning_trainers("CPUdemo"), pretraining_trainers("_T_CPUbench")),
    "cpu-long": Budget(*cpu_finetuning_trainers("CPUlong"), pretraining_trainers("_T_CPUbench")),
    "cpu-xlong": Budget(*cpu_finetuning_trainers("CPUxlong"), pretraining_trainers("_T_CPUbench")),
    "cpu-xxlong": Budget(*cpu_finetuning_trainers("CPUxxlong"), pretraining_trainers("_T_CPUbench")),
    "cpu-long-pretrain300": Budget(*cpu_finetuning_trainers("CPUlong"), pretraining_trainers("_T_CPUbench300"),
                                   pretrain_label="pretrain300ep"),
    "cpu-xlong-pretrain300": Budget(*cpu_finetuning_trainers("CPUxlong"), pretraining_trainers("_T_CPUbench300"),
                                    pretrain_label="pretrain300ep"),
    # for a plan whose patch is 64^3 or more (e.g. --pretrain-dataset at a finer spacing), where MiM's
    # octants are 2 tokens per axis and a step costs 8-12x a 32^3 one on the CPU
    "cpu-long-pretrain25": Budget(*cpu_finetuning_trainers("CPUlong"), pretraining_trainers("_T_CPUbench25"),
                                  pretrain_label="pretrain25ep"),
    "gpu": Budget("nnUNetTrainer_250epochs", "nnUNetTrainerMiMScratch_250ep", "nnUNetTrainerMiMFinetune_250ep",
                  pretraining_trainers("_100ep")),
}
ARMS = ["nnU-Net", "scratch", "MAE", "MiM", "MiM-noalign"]  # the arms run unless --arms says otherwise
# Scratch at the default fine-tuning schedule whatever --schedule says. A schedule made for
# pre-trained weights (decoder-first freezes the encoder at first) can cost a random network
# (docs/experiments/20-the-default-schedule-at-1200-steps.md). This arm puts scratch at its own
# schedule in the same table, beside the exactly matched scratch arm.
SCRATCH_DEFAULT = "scratch-default"
ARM_CHOICES = ARMS + [SCRATCH_DEFAULT]
# fine-tuning schedules: the suffix of their trainer variants (nnunet_mim/variants.py)
# frozen-encoder is a probe, not a way to fine-tune: the encoder never trains, so the pre-trained arms
# and scratch differ only in the features their encoder hands the decoder
SCHEDULES = {"default": "", "layer-decay": "_LayerDecay", "decoder-first": "_DecoderFirst",
             "frozen-encoder": "_FrozenEncoder"}
LOG_TAIL_LINES = 15  # of a failed run's output, shown in its error: nnU-Net's exception is at the end


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


@dataclass(frozen=True)
class GivenWeights:
    """A pre-training checkpoint given to a pre-trained arm instead of the benchmark's own pre-training."""
    path: str
    digest: str  # of the file's bytes: names the arm's results folders, so other weights never reuse its runs
    description: str


def given_pretrained_weights(arm: str, path: str, arms: Sequence[str], budget: Budget) -> GivenWeights:
    """--pretrained-weights ARM=FILE, checked before any run: ARM is a pre-trained arm being run, FILE an
    nnunet-mim pre-training checkpoint of that arm's method (so the table never labels one method's
    weights with another's name). Whether it fits the dataset's network is checked by the fine-tuning
    trainer, as for any -pretrained_weights."""
    if arm not in budget.pretrain:
        raise BenchmarkError(f"--pretrained-weights {arm}=...: {arm} is not a pre-trained arm "
                             f"(those are {', '.join(budget.pretrain)})")
    if arm not in arms:
        raise BenchmarkError(f"--pretrained-weights {arm}=...: the arm {arm} is not run (add it to --arms)")
    if not os.path.isfile(path):
        raise BenchmarkError(f"--pretrained-weights {arm}={path}: no such file")
    try:
        checkpoint = load_checkpoint(path)
        record = pretraining_checkpoint_record(path, checkpoint)
    except RuntimeError as error:
        raise BenchmarkError(f"--pretrained-weights {arm}=...: {error}") from error
    extras = checkpoint.get("nnunet_mim", {})
    found = record.method
    if found == "MiM" and "alignment_weight" in extras:
        found = "MiM" if extras["alignment_weight"] > 0 else "MiM-noalign"
    # a MiM checkpoint written before the alignment weight was kept may be either MiM arm's
    accepted = {arm} if "alignment_weight" in extras else {arm, arm.split("-")[0]}
    if found not in accepted:
        raise BenchmarkError(f"--pretrained-weights {arm}={path} holds {found} pre-training, not {arm}'s: give it "
                             "to the arm of its method")
    description = record.describe()
    if found == "MAE" and "levels" in extras:
        description += f", mask ratio {extras['levels']['l1_mask_ratio']:g}"
    elif "alignment_weight" in extras:
        description += f", alignment weight {extras['alignment_weight']:g}"
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()[:12]
    return GivenWeights(os.path.abspath(path), digest, description)


class DownstreamBenchmark:
    def __init__(self, dataset: str, configuration: str, folds: Sequence[int], fractions: Sequence[float],
                 budget: str, work_folder: str, seed: int = 0, arms: Sequence[str] = ARMS,
                 device: Optional[str] = None, pretrain_dataset: Optional[str] = None, schedule: str = "default",
                 plans: str = "nnUNetPlans", pretrain_plans: Optional[str] = None, report_only: bool = False,
                 init_seeds: Sequence[int] = (0,), pretrained_weights: Optional[Mapping[str, str]] = None):
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
        for var in ("nnUNet_raw", "nnUNet_preprocessed"):
            if var not in os.environ:
                raise BenchmarkError(f"{var} is not set: the benchmark reads the dataset from nnU-Net's folders")
        unknown = [arm for arm in arms if arm not in ARM_CHOICES]
        if unknown:  # a misspelt pre-trained arm would otherwise fine-tune from random weights under its name
            raise BenchmarkError(f"unknown arms {unknown}: choose from {ARM_CHOICES}")
        if SCRATCH_DEFAULT in arms and schedule == "default":
            raise BenchmarkError(f"{SCRATCH_DEFAULT} is scratch at the default schedule: it differs from the "
                                 "scratch arm only with another --schedule")
        if not init_seeds or min(init_seeds) < 0 or len(set(init_seeds)) < len(init_seeds):
            raise BenchmarkError(f"--init-seed takes distinct seeds of 0 or more, got {list(init_seeds)}")
        if not all(0 < fraction <= 1 for fraction in fractions):
            raise BenchmarkError(f"label fractions must lie in (0, 1], got {list(fractions)}")
        try:
            self.dataset_name = maybe_convert_to_dataset_name(dataset)
            self.pretrain_dataset_name = maybe_convert_to_dataset_name(pretrain_dataset or dataset)
        except RuntimeError as error:  # nnU-Net's "Could not find a dataset with the ID ..."
            raise BenchmarkError(str(error)) from error
        self.source = os.path.join(os.environ["nnUNet_preprocessed"], self.dataset_name)
        # another pre-training dataset has its own plans: a collection only ever has nnUNetPlans
        self.plans = plans
        self.pretrain_plans = pretrain_plans or (plans if self.pretrain_dataset_name == self.dataset_name
                                                 else "nnUNetPlans")
        check_plans_file(self.pretrain_dataset_name, self.pretrain_plans)
        self.data_folder = preprocessed_data_folder(self.dataset_name, self.plans, configuration)
        self.class_names = class_names(load_json(os.path.join(self.source, "dataset.json"))["labels"])
        self.configuration, self.folds, self.fractions = configuration, list(folds), list(fractions)
        self.budget, self.budget_name, self.seed, self.arms = BUDGETS[budget], budget, seed, list(arms)
        self.schedule, self.report_only, self.init_seeds = schedule, report_only, list(init_seeds)
        self.given_weights = {arm: given_pretrained_weights(arm, path, self.arms, self.budget)
                              for arm, path in (pretrained_weights or {}).items()}
        n_folds = len(self.base_splits())
        if not all(0 <= fold < n_folds for fold in self.folds):
            raise BenchmarkError(f"folds {self.folds}: {self.dataset_name}'s split has folds 0-{n_folds - 1}")
        from nnunet_mim import variants
        for arm in ("scratch", "MiM"):
            if not hasattr(variants, self.trainer(arm)):
                raise BenchmarkError(f"budget '{budget}' has no '{schedule}' schedule "
                                     f"({self.trainer(arm)} does not exist)")
        if device is None:
            import torch
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = device
        self.work = os.path.abspath(work_folder)
        os.makedirs(self.work, exist_ok=True)
        self.log = open(os.path.join(self.work, "benchmark.log"), "a")

    # ---- folders -----------------------------------------------------------------------------
    def base_splits(self) -> List[dict]:
        return cross_validation_splits(self.source, self.data_folder)

    def fraction_env(self, fraction: float, arm: str, init_seed: Optional[int] = None) -> Dict[str, str]:
        """The fraction's preprocessed folder; results per arm (the fine-tuned arms share one
        trainer name, so they must not share a results folder). Each seed (label draw) has its own
        folders, so a rerun with another --seed never reuses another draw's runs; seed 0 keeps the
        plain name that work folders from before seeds were named still use."""
        name = f"labels_{int(round(fraction * 100)):03d}pct" + (f"_seed{self.seed}" if self.seed else "")
        root = os.path.join(self.work, name)
        dataset = os.path.join(root, "nnUNet_preprocessed", self.dataset_name)
        splits = label_fraction_splits(self.base_splits(), fraction, self.seed)
        if not os.path.isdir(dataset):
            os.makedirs(dataset)
            for entry in os.listdir(self.source):
                if entry != "splits_final.json":
                    os.symlink(os.path.join(self.source, entry), os.path.join(dataset, entry))
            save_json(splits, os.path.join(dataset, "splits_final.json"))
        elif load_json(os.path.join(dataset, "splits_final.json")) != splits:
            raise BenchmarkError(f"{root} holds runs on other label subsets than {self.dataset_name}'s splits "
                                 f"and seed {self.seed} give now (did its splits_final.json change?): "
                                 "use a new --work-folder")
        init_seed = self.init_seeds[0] if init_seed is None else init_seed
        results = os.path.join(root, "nnUNet_results", self.results_name(arm, init_seed))
        return self.env(os.path.join(root, "nnUNet_preprocessed"), results, init_seed)

    def pretraining_name(self, arm: str) -> str:
        """What a pre-trained arm was pre-trained with, as its results folders name it ("" for the other
        arms): nnunet-mim compare never averages runs of two pre-trainings as one arm."""
        return self.results_name(arm, 0) if arm in self.budget.pretrain else ""

    def results_name(self, arm: str, init_seed: int) -> str:
        """A pre-trained arm's results folder names its pre-training (the budget's label, the
        dataset when that is not the benchmark's own), so runs from another pre-training are never
        reused; scratch and the stock arm do not depend on it and are shared. Another --init-seed gets
        folders of its own (the stock arm's too: nnU-Net's trainer is not seeded, but the runs stay apart)."""
        init = f"_init{init_seed}" if init_seed else ""
        if arm == SCRATCH_DEFAULT:  # its trainer is the one of scratch at the default schedule: runs are shared
            return "scratch" + init
        if arm not in self.budget.pretrain:
            return arm + init
        if arm in self.given_weights:
            return f"{arm}_weights_{self.given_weights[arm].digest}" + init
        name = f"{arm}_{self.budget.pretrain_label}" if self.budget.pretrain_label else arm
        if self.pretrain_dataset_name != self.dataset_name:
            name += f"_pretrained_on_{self.pretrain_dataset_name}"
        return name + init

    def env(self, preprocessed: str, results: str, seed: int) -> Dict[str, str]:
        os.makedirs(results, exist_ok=True)
        return dict(os.environ, nnUNet_preprocessed=preprocessed, nnUNet_results=results,
                    nnUNet_extTrainer=ext_trainer_value(os.environ.get("nnUNet_extTrainer", ""), cpu_budgets=True),
                    **{SEED_VARIABLE: str(seed)})

    # ---- runs ----------------------------------------------------------------------------------
    def trainer(self, arm: str) -> str:
        """The arm's trainer. The schedule applies to scratch and the pre-trained arms alike, so they
        still differ only in their initial weights; the stock reference keeps nnU-Net's own, and
        scratch-default the default."""
        if arm == "nnU-Net":
            return self.budget.stock
        if arm == SCRATCH_DEFAULT:
            return self.budget.scratch
        return (self.budget.scratch if arm == "scratch" else self.budget.finetune) + SCHEDULES[self.schedule]

    def train(self, env: Dict[str, str], trainer: str, fold, pretrained: Optional[str] = None,
              dataset: Optional[str] = None, plans: Optional[str] = None) -> str:
        dataset, plans = dataset or self.dataset_name, plans or self.plans
        folder = os.path.join(env["nnUNet_results"], dataset, f"{trainer}__{plans}__{self.configuration}",
                              f"fold_{fold}")
        done = os.path.join(folder, "validation", "summary.json") if fold != "all" else \
            os.path.join(folder, "checkpoint_final.pth")
        if os.path.isfile(done):  # rerunning the benchmark continues where it stopped
            return folder
        if self.report_only:
            raise BenchmarkError(f"--report-only trains nothing, and {folder} holds no finished run: run the "
                                 "benchmark without it, or with the arms, folds and fractions that were run")
        args = [nnunet_command("nnUNetv2_train"), dataset, self.configuration, str(fold), "-tr", trainer,
                "-p", plans, "-device", self.device]
        if any(os.path.isfile(os.path.join(folder, c)) for c in CHECKPOINTS):
            args += ["--c"]  # an interrupted run: continue it (its weights already hold the pre-training)
        elif pretrained:
            args += ["-pretrained_weights", pretrained]
        self.log.write(f"$ {' '.join(args)}\n")
        self.log.flush()
        result = subprocess.run(args, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        if result.returncode:
            with open(self.log.name) as log:
                tail = "".join(log.readlines()[-LOG_TAIL_LINES:])
            raise BenchmarkError(f"{' '.join(args)} failed; its last lines below, all of it in {self.log.name}\n"
                                 + textwrap.indent(tail, "    "))
        return folder

    def pretrain(self, method: str) -> str:
        # seed 0 whatever --init-seed says: one pre-training serves the runs of every seed
        env = self.env(os.environ["nnUNet_preprocessed"], os.path.join(self.work, "pretraining", "nnUNet_results"), 0)
        return os.path.join(self.train(env, self.budget.pretrain[method], "all", dataset=self.pretrain_dataset_name,
                                       plans=self.pretrain_plans), "checkpoint_final.pth")

    @property
    def pretrained_methods(self) -> List[str]:
        """The arms the benchmark pre-trains itself: the pre-trained arms not given --pretrained-weights."""
        return [arm for arm in self.arms if arm in self.budget.pretrain and arm not in self.given_weights]

    def pretraining_warnings(self) -> List[str]:
        """Said before hours of runs and under the results table, not only deep in a pre-training
        log: what the plan's patch leaves of each method (MiM's hierarchy needs 64 voxels per axis)."""
        from nnunet_mim import variants
        from nnunet_mim.plans import adapt_plans
        plans = load_json(plans_file(self.pretrain_dataset_name, self.pretrain_plans))
        warnings = []
        for method in self.pretrained_methods:
            trainer = getattr(variants, self.budget.pretrain[method])
            levels = trainer.levels
            config = adapt_plans(plans, self.configuration, trainer.encoder_preset, levels.patch_multiple)
            warning = levels.hierarchy_warning(config["configurations"][self.configuration]["patch_size"])
            if warning:
                warnings.append(f"WARNING ({method} pre-training): {warning}")
        return warnings

    def schedule_note(self) -> Optional[str]:
        """Said before the runs and under the table when scratch shares a non-default schedule with
        pre-trained arms: the match is exact, but a schedule made for pre-trained weights can handicap
        random ones (decoder-first freezes scratch's random encoder for its first epochs), so the table
        then compares every arm at the pre-trained arms' schedule, not each at its best. Nothing is
        said when the scratch-default arm is run: the table then holds scratch at both schedules."""
        if (self.schedule == "default" or "scratch" not in self.arms or not self.pretrained_methods
                or SCRATCH_DEFAULT in self.arms):
            return None
        return (f"NOTE: --schedule {self.schedule} fine-tunes scratch with that schedule too, and a schedule "
                "that suits pre-trained weights can cost random ones (docs/experiments/"
                "20-the-default-schedule-at-1200-steps.md). To compare with scratch at its own schedule too, add "
                f"the arm {SCRATCH_DEFAULT} (--arms ... scratch-default): it reuses the default-schedule scratch "
                "runs of the work folder.")

    def table_notes(self) -> List[str]:
        """What the results table must be read with: where given weights come from, the pre-training
        warnings and the schedule note."""
        given = [f"{arm}: fine-tuned from {weights.path} ({weights.description})"
                 for arm, weights in self.given_weights.items()]
        return given + self.pretraining_warnings() + list(filter(None, [self.schedule_note()]))

    def run(self) -> Tuple[List[dict], List[dict]]:
        """Pre-train, then train every arm, label fraction and fold (finished runs are reused):
        the Dice rows of every run (``scores``) and the learning curve of every run (``curve_rows``)."""
        from tqdm import tqdm
        # a report reads only the fine-tuned runs: it needs no pre-training checkpoint
        methods = [] if self.report_only else self.pretrained_methods
        notes = self.table_notes() + ([] if self.report_only else [data_loading_note(os.environ)])
        for note in filter(None, notes):
            print(note, flush=True)
            self.log.write(note + "\n")
        total = len(methods) + len(self.init_seeds) * len(self.fractions) * len(self.folds) * len(self.arms)
        bar = tqdm(total=total, unit="run")
        checkpoints = {arm: weights.path for arm, weights in self.given_weights.items()}
        for method in methods:
            bar.set_description(f"pre-training {method}")
            checkpoints[method] = self.pretrain(method)
            bar.update()
        rows, curves = [], []
        for init_seed in self.init_seeds:  # one seed's table is whole before the next seed starts
            seed_label = f", init seed {init_seed}" if len(self.init_seeds) > 1 else ""
            for fraction in self.fractions:
                for fold in self.folds:
                    for arm in self.arms:
                        env = self.fraction_env(fraction, arm, init_seed)
                        bar.set_description(f"{arm}, {fraction:.0%} labels, fold {fold}{seed_label}")
                        trainer = self.trainer(arm)
                        folder = self.train(env, trainer, fold, checkpoints.get(arm))
                        run = {"arm": arm, "fraction": fraction, "fold": fold, "label_seed": self.seed,
                               "init_seed": init_seed, "trainer": trainer, "pretraining": self.pretraining_name(arm)}
                        rows += self.scores(folder, run)
                        curves += curve_rows(folder, arm, fraction, fold, init_seed)
                        bar.update()
        bar.close()
        return rows, curves

    def scores(self, run_folder: str, run: dict) -> List[dict]:
        """One row per class and one for the mean foreground Dice of a finished fold (nnU-Net's
        own validation summary), each row ``run`` plus class, label and dice."""
        summary = load_json(os.path.join(run_folder, "validation", "summary.json"))
        rows = [dict(run, **{"class": self.class_names.get(key, key), "label": key, "dice": metrics["Dice"]})
                for key, metrics in summary["mean"].items()]  # keyed by label value or region
        return rows + [dict(run, **{"class": "mean", "label": "", "dice": summary["foreground_mean"]["Dice"]})]


def class_names(labels: Dict[str, object]) -> Dict[str, str]:
    """summary.json key -> class name from dataset.json "labels": nnU-Net keys a label by its
    value ("2") and a region by its tuple of labels ("(1, 2, 3)")."""
    from nnunetv2.evaluation.evaluate_predictions import label_or_region_to_key
    return {label_or_region_to_key(tuple(value) if isinstance(value, list) else value): name
            for name, value in labels.items()}


def arms_in(rows: List[dict]) -> List[str]:
    """The arms of ``rows``, in the order they first appear."""
    return list(dict.fromkeys(r["arm"] for r in rows))


RESULTS_NAME = "downstream"  # a benchmark's outputs: downstream.md, downstream_runs.csv, ... (write_outputs)


def read_runs(results: str) -> Tuple[List[dict], str]:
    """A finished benchmark's rows (from its results folder or its downstream_runs.csv), typed as
    ``run`` made them, and its title (the first line of downstream.md next to it; "" if absent)."""
    runs_csv = f"{RESULTS_NAME}_runs.csv"
    path = os.path.join(results, runs_csv) if os.path.isdir(results) else results
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no {runs_csv} in {results}: name a results folder of nnunet-mim benchmark")
    markdown = os.path.join(os.path.dirname(path), f"{RESULTS_NAME}.md")
    title = open(markdown).readline().strip() if os.path.isfile(markdown) else ""
    label_seed, init_seed = titled_label_seed(title), titled_init_seed(title)

    def seed(row: dict, field: str, titled: Optional[int]) -> Optional[int]:
        return int(row[field]) if row.get(field) else titled  # older rows do not name it: the title does
    with open(path, newline="") as f:
        rows = [dict(r, fraction=float(r["fraction"]), fold=int(r["fold"]), dice=float(r["dice"]),
                     label_seed=seed(r, "label_seed", label_seed), init_seed=seed(r, "init_seed", init_seed))
                for r in csv.DictReader(f)]
    if not rows:
        raise ValueError(f"{path} holds no runs")
    return rows, title


def titled_init_seed(title: str) -> int:
    """The init seed of a benchmark whose rows do not name theirs (written before they did): its title
    says "init seed N" for a seed other than 0."""
    named = re.search(r"init seed (\d+)", title)
    return int(named.group(1)) if named else 0


def titled_label_seed(title: str) -> Optional[int]:
    """The label draw (--seed) of a benchmark whose rows do not name theirs: its title says "seed N"
    (None for a title that does not, or no title)."""
    named = re.search(r"(?<!init )\bseed (\d+)", title)
    return int(named.group(1)) if named else None


def differing_arms(benchmarks: Dict[str, List[dict]]) -> set:
    """The arms whose runs differ between benchmarks (label -> rows): another trainer, pre-training or
    label draw (--seed: other labelled cases in each fold), or other Dice at the same labels, fold and
    init seed. MiM pre-trained two ways differs; scratch reused in one work folder (the same Dice for
    every class) does not, nor does scratch at two init seeds (its runs are then averaged per fold)."""
    scores, settings = {}, {}  # (label, arm, fraction, fold, init seed) -> {class: dice}; arm -> field -> values
    for label, rows in benchmarks.items():
        for r in rows:
            scores.setdefault((label, r["arm"], r["fraction"], r["fold"], r["init_seed"]), {})[r["class"]] = r["dice"]
            found = settings.setdefault(r["arm"], {"trainer": set(), "pretraining": set(), "label_seed": set()})
            for field in found:
                if r.get(field) is not None:  # runs written before rows named these fields do not say
                    found[field].add(r[field])
    differing = {arm for arm, found in settings.items() if any(len(values) > 1 for values in found.values())}
    first_scores = {}
    for (label, *run), dice in scores.items():
        if first_scores.setdefault(tuple(run), dice) != dice:
            differing.add(run[0])
    return differing


def merge_benchmarks(tables: Dict[str, List[dict]], differing: set, key: Sequence[str]) -> List[dict]:
    """Rows of several benchmarks (label -> rows: runs' Dice or curves) as one benchmark's, each
    tagged with its benchmark's label. An arm in ``differing`` is named "ARM LABEL" in every
    benchmark, so that no fold is averaged or paired across two different runs; a row whose arm and
    ``key`` fields an earlier benchmark already gave belongs to the same run and is kept once."""
    merged, kept = [], set()
    for label, rows in tables.items():
        for r in rows:
            arm = f"{r['arm']} {label}" if r["arm"] in differing else r["arm"]
            identity = (arm, *(r[field] for field in key))
            if identity not in kept:
                kept.add(identity)
                merged.append(dict(r, arm=arm, benchmark=label))
    return merged


def seeds_by_fold(rows: List[dict]) -> Dict[int, Dict[int, float]]:
    """fold -> {init seed: Dice} of the rows of one arm, label fraction and class (rows without an
    init seed are seed 0's)."""
    runs: Dict[int, Dict[int, float]] = {}
    for r in rows:
        runs.setdefault(r["fold"], {})[r.get("init_seed", 0)] = r["dice"]
    return runs


def seeds_in(runs: Dict[int, Dict[int, float]]) -> List[int]:
    """The init seeds of ``seeds_by_fold``'s runs, in the order they were run."""
    return list(dict.fromkeys(seed for by_seed in runs.values() for seed in by_seed))


def fold_means(runs: Dict[int, Dict[int, float]]) -> Dict[int, float]:
    """fold -> the mean Dice over the init seeds run at that fold. Seeds are averaged before folds are
    paired: a fold's figure then holds less of the random initialisation's noise, and the paired test
    stays one over the folds, whose cases differ, not over runs that share their cases."""
    return {fold: float(np.mean(list(seeds.values()))) for fold, seeds in runs.items()}


def summarise(rows: List[dict], reference: str = "scratch") -> List[dict]:
    """Mean and sd over folds per arm, fraction and class (each fold the mean over its init seeds);
    difference to the reference arm and a paired t-test over the folds."""
    from scipy.stats import ttest_rel
    table = []
    classes = list(dict.fromkeys(r["class"] for r in rows))  # as the runs list them: labels, then mean
    keys = sorted({(r["fraction"], r["class"]) for r in rows}, key=lambda k: (k[0], classes.index(k[1])))
    arms = arms_in(rows)
    for fraction, cls in keys:
        runs = {a: seeds_by_fold([r for r in rows if (r["arm"], r["fraction"], r["class"]) == (a, fraction, cls)])
                for a in arms}
        per_arm = {a: fold_means(runs[a]) for a in arms}
        for arm in arms:
            folds = sorted(per_arm[arm])
            if not folds:  # combined benchmarks: an arm need not be run at every label fraction
                continue
            values = np.array([per_arm[arm][f] for f in folds])
            entry = {"fraction": fraction, "class": cls, "arm": arm, "folds": len(folds),
                     "init_seeds": " ".join(map(str, seeds_in(runs[arm]))), "mean": float(values.mean()),
                     "sd": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                     "diff_vs_reference": float("nan"), "p_vs_reference": float("nan")}
            base = per_arm.get(reference, {})
            paired = [f for f in folds if f in base]
            if arm != reference and paired:
                diff = np.array([per_arm[arm][f] - base[f] for f in paired])
                entry["diff_vs_reference"] = float(diff.mean())
                if len(paired) > 1 and np.any(diff != diff[0]):
                    entry["p_vs_reference"] = float(ttest_rel([per_arm[arm][f] for f in paired],
                                                              [base[f] for f in paired]).pvalue)
            table.append(entry)
    return table


def summary_lines(table: List[dict], reference: str) -> List[str]:
    """Markdown lines of ``summarise``'s entries: one row per label fraction, class and arm."""
    fmt = lambda v, spec: "n/a" if v != v else format(v, spec)  # noqa: E731  (nan -> n/a)
    lines = [f"| labels | class | arm | folds | init seeds | Dice mean | sd | vs {reference} | paired p |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in table:
        lines.append(f"| {e['fraction']:.0%} | {e['class']} | {e['arm']} | {e['folds']} | {e['init_seeds']} | "
                     f"{e['mean']:.3f} | {fmt(e['sd'], '.3f')} | {fmt(e['diff_vs_reference'], '+.3f')} | "
                     f"{fmt(e['p_vs_reference'], '.3f')} |")
    return lines


def mean_dice_against(rows: List[dict], reference: str) -> List[str]:
    """Markdown lines: every arm's mean Dice against a second reference, for under the main table
    (scratch-default: the pre-trained arms against scratch at its own schedule)."""
    table = [e for e in summarise(rows, reference) if e["class"] == "mean"]
    return [f"Mean Dice against {reference}:", ""] + summary_lines(table, reference)


def per_fold_table(rows: List[dict]) -> List[str]:
    """Markdown lines: the mean Dice of every run, one line per label fraction and arm, one column per
    fold ("-" where that arm has no run of that fold); an arm run at several init seeds has a line per
    seed, then the line of their means (the figures paired)."""
    mean_rows = [r for r in rows if r["class"] == "mean"]
    folds = sorted({r["fold"] for r in mean_rows})
    lines = ["| labels | arm | " + " | ".join(f"fold {f}" for f in folds) + " |", "|---|---|" + "---|" * len(folds)]

    def add(fraction: float, name: str, dice: Dict[int, float]) -> None:
        lines.append(f"| {fraction:.0%} | {name} | " + " | ".join(f"{dice[f]:.3f}" if f in dice else "-" for f in folds)
                     + " |")
    for fraction in sorted({r["fraction"] for r in mean_rows}):
        for arm in arms_in(rows):
            runs = seeds_by_fold([r for r in mean_rows if (r["arm"], r["fraction"]) == (arm, fraction)])
            seeds = seeds_in(runs)
            if len(seeds) > 1:
                for seed in seeds:
                    add(fraction, f"{arm}, init seed {seed}", {f: by_seed[seed] for f, by_seed in runs.items()
                                                               if seed in by_seed})
                add(fraction, f"{arm}, mean of {len(seeds)} seeds", fold_means(runs))
            elif seeds:
                add(fraction, arm, fold_means(runs))
    return lines


def paragraphs(*blocks: Sequence[str]) -> List[str]:
    """The lines of the non-empty blocks, a blank line between one block and the next."""
    lines: List[str] = []
    for block in blocks:
        if block:
            lines += ([""] if lines else []) + list(block)
    return lines


def write_outputs(rows: List[dict], folder: str, title: str, reference: str = "scratch",
                  name: str = RESULTS_NAME, notes: Sequence[str] = ()) -> str:
    """NAME_runs.csv (one row per run and class), NAME.csv/.md (summary, then ``notes``), NAME.png."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, f"{name}_runs.csv"), "w", newline="") as f:
        # every field of every row: compare joins older benchmarks, whose rows name fewer
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(field for r in rows for field in r)))
        writer.writeheader()
        writer.writerows(rows)
    table = summarise(rows, reference)
    with open(os.path.join(folder, f"{name}.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(table[0]))
        writer.writeheader()
        writer.writerows(table)
    markdown = "\n".join(paragraphs([title], summary_lines(table, reference),
                                    ["Mean Dice per fold (the pairs behind each paired test):"], per_fold_table(rows),
                                    notes))
    with open(os.path.join(folder, f"{name}.md"), "w") as f:
        f.write(markdown + "\n")
    fig, ax = plt.subplots(figsize=(7, 5))
    for arm in arms_in(rows):
        points = sorted((e["fraction"], e["mean"], e["sd"]) for e in table if e["arm"] == arm and e["class"] == "mean")
        if points:
            x, y, sd = zip(*points)
            ax.errorbar([100 * v for v in x], y, yerr=[0 if s != s else s for s in sd], marker="o", capsize=3,
                        label=arm)
    ax.set_xlabel("labelled training cases (%)")
    ax.set_ylabel("mean foreground Dice (validation folds)")
    ax.set_title(textwrap.fill(title, 100), fontsize=7)  # the note can be long
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(folder, f"{name}.png"), dpi=100)
    plt.close(fig)
    return markdown
