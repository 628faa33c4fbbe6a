"""The runs of a benchmark: pre-training once per method, then every arm, label fraction, fold and seed
through nnU-Net's own commands, each in its own folders, scored by nnU-Net's own validation."""
import os
import subprocess
import textwrap
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from batchgenerators.utilities.file_and_folder_operations import load_json, save_json

from nnunet_mim.benchmark.arms import ARM_CHOICES, ARMS, BUDGETS, SCHEDULES, SCRATCH_DEFAULT, given_pretrained_weights
from nnunet_mim.benchmark.plan import (
    BenchmarkError,
    check_plans_file,
    class_names,
    cross_validation_splits,
    data_loading_note,
    label_fraction_splits,
    plans_file,
    preprocessed_data_folder,
)
from nnunet_mim.checkpointing import CHECKPOINTS
from nnunet_mim.demo import nnunet_command
from nnunet_mim.environment import ext_trainer_value
from nnunet_mim.learning_curves import curve_rows
from nnunet_mim.seeding import SEED_VARIABLE

LOG_TAIL_LINES = 15  # of a failed run's output, shown in its error: nnU-Net's exception is at the end


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
