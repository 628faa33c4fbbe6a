"""The runs of a benchmark: pre-training once per method, then every arm, label fraction, fold and seed
through nnU-Net's own commands, each in its own folders (folders.py), scored by nnU-Net's own validation."""
import os
import subprocess
import textwrap
from typing import Dict, List, Optional, Tuple

from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_mim.benchmark.arms import BUDGETS, GIVEN, GIVEN_SCRATCH, arm_trainer
from nnunet_mim.benchmark.folders import RunFolders
from nnunet_mim.benchmark.notes import table_notes
from nnunet_mim.benchmark.plan import BenchmarkError, data_loading_note
from nnunet_mim.benchmark.spec import BenchmarkSpec, resolve
from nnunet_mim.checkpointing import CHECKPOINTS
from nnunet_mim.demo import nnunet_command
from nnunet_mim.learning_curves import curve_rows

LOG_TAIL_LINES = 15  # of a failed run's output, shown in its error: nnU-Net's exception is at the end


class DownstreamBenchmark:
    def __init__(self, spec: BenchmarkSpec):
        self.spec, self.budget = spec, BUDGETS[spec.budget]
        self.inputs = resolve(spec)
        self.folders = RunFolders(spec, self.inputs)
        os.makedirs(self.folders.work, exist_ok=True)
        self.log = open(os.path.join(self.folders.work, "benchmark.log"), "a")

    def trainer(self, arm: str) -> str:
        if arm in (GIVEN, GIVEN_SCRATCH):  # the given weights' own network, at the budget's length
            return self.inputs.given_weights[GIVEN].trainer
        return arm_trainer(self.budget, self.spec.schedule, arm)

    @property
    def pretrained_methods(self) -> List[str]:
        """The arms the benchmark pre-trains itself: the pre-trained arms not given --pretrained-weights."""
        return [arm for arm in self.spec.arms if arm in self.budget.pretrain and arm not in self.inputs.given_weights]

    def table_notes(self) -> List[str]:
        return table_notes(self.spec, self.inputs, self.pretrained_methods)

    def title(self) -> str:
        return self.spec.title(self.inputs, bool(self.pretrained_methods))

    def train(self, env: Dict[str, str], trainer: str, fold, pretrained: Optional[str] = None,
              dataset: Optional[str] = None, plans: Optional[str] = None) -> str:
        """nnUNetv2_train of one run, unless it finished before (then its folder is reused); an interrupted run
        is continued (its weights already hold the pre-training). Returns the run's folder."""
        dataset, plans = dataset or self.inputs.dataset_name, plans or self.spec.plans
        folder = os.path.join(env["nnUNet_results"], dataset, f"{trainer}__{plans}__{self.spec.configuration}",
                              f"fold_{fold}")
        done = os.path.join(folder, "validation", "summary.json") if fold != "all" else \
            os.path.join(folder, "checkpoint_final.pth")
        if os.path.isfile(done):
            return folder
        if self.spec.report_only:
            raise BenchmarkError(f"--report-only trains nothing, and {folder} holds no finished run: run the "
                                 "benchmark without it, or with the arms, folds and fractions that were run")
        args = [nnunet_command("nnUNetv2_train"), dataset, self.spec.configuration, str(fold), "-tr", trainer,
                "-p", plans, "-device", self.inputs.device]
        if any(os.path.isfile(os.path.join(folder, c)) for c in CHECKPOINTS):
            args += ["--c"]
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
        run = self.train(self.folders.pretraining_env(), self.budget.pretrain[method], "all",
                         dataset=self.inputs.pretrain_dataset_name, plans=self.inputs.pretrain_plans)
        return os.path.join(run, "checkpoint_final.pth")

    def run(self) -> Tuple[List[dict], List[dict]]:
        """Pre-train, then train every arm, label fraction and fold (finished runs are reused):
        the Dice rows of every run (``scores``) and the learning curve of every run (``curve_rows``)."""
        from tqdm import tqdm
        spec = self.spec
        # a report reads only the fine-tuned runs: it needs no pre-training checkpoint
        methods = [] if spec.report_only else self.pretrained_methods
        for note in filter(None, self.table_notes() + ([] if spec.report_only else [data_loading_note(os.environ)])):
            print(note, flush=True)
            self.log.write(note + "\n")
        bar = tqdm(total=len(methods) + len(spec.init_seeds) * len(spec.fractions) * len(spec.folds) * len(spec.arms),
                   unit="run")
        checkpoints = {arm: weights.path for arm, weights in self.inputs.given_weights.items()}
        for method in methods:
            bar.set_description(f"pre-training {method}")
            checkpoints[method] = self.pretrain(method)
            bar.update()
        rows, curves = [], []
        for init_seed in spec.init_seeds:  # one seed's table is whole before the next seed starts
            seed_label = f", init seed {init_seed}" if len(spec.init_seeds) > 1 else ""
            for fraction in spec.fractions:
                for fold in spec.folds:
                    for arm in spec.arms:
                        bar.set_description(f"{arm}, {fraction:.0%} labels, fold {fold}{seed_label}")
                        folder = self.train(self.folders.fraction_env(fraction, arm, init_seed), self.trainer(arm),
                                            fold, checkpoints.get(arm))
                        run = {"arm": arm, "fraction": fraction, "fold": fold, "label_seed": spec.seed,
                               "init_seed": init_seed, "trainer": self.trainer(arm),
                               "pretraining": self.folders.pretraining_name(arm)}
                        rows += self.scores(folder, run)
                        curves += curve_rows(folder, arm, fraction, fold, init_seed)
                        bar.update()
        bar.close()
        return rows, curves

    def scores(self, run_folder: str, run: dict) -> List[dict]:
        """One row per class and one for the mean foreground Dice of a finished fold (nnU-Net's
        own validation summary), each row ``run`` plus class, label and dice."""
        summary = load_json(os.path.join(run_folder, "validation", "summary.json"))
        names = self.inputs.class_names
        rows = [dict(run, **{"class": names.get(key, key), "label": key, "dice": metrics["Dice"]})
                for key, metrics in summary["mean"].items()]  # keyed by label value or region
        return rows + [dict(run, **{"class": "mean", "label": "", "dice": summary["foreground_mean"]["Dice"]})]
