"""What a benchmark runs: ``BenchmarkSpec``, the user's request (``nnunet-mim benchmark``'s options), checked
field by field when it is made; ``BenchmarkInputs``, what it resolves to in nnU-Net's folders (dataset names,
preprocessed data, folds, class names, given weights), each missing piece named with what to run first."""
import os
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Tuple

from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_mim.benchmark.arms import (ARM_CHOICES, ARMS, BUDGETS, GIVEN, GIVEN_SCRATCH, SCHEDULES,
                                       SCRATCH_DEFAULT, GivenWeights, arm_trainer, given_pretrained_weights)
from nnunet_mim.benchmark.plan import (BenchmarkError, check_plans_file, class_names, cross_validation_splits,
                                       plans_file, preprocessed_data_folder)


@dataclass(frozen=True)
class BenchmarkSpec:
    dataset: str                                   # nnU-Net dataset ID or name, planned and preprocessed
    configuration: str = "3d_fullres"
    folds: Tuple[int, ...] = (0, 1, 2, 3, 4)
    fractions: Tuple[float, ...] = (0.1, 0.25, 1.0)  # label fractions
    budget: str = "cpu"                            # a key of BUDGETS
    work_folder: str = "nnunet_mim_benchmark"
    seed: int = 0                                  # of the label-fraction subsets
    arms: Tuple[str, ...] = tuple(ARMS)
    device: Optional[str] = None                   # None: cuda where there is one
    pretrain_dataset: Optional[str] = None         # None: the benchmark dataset's own training images
    schedule: str = "default"                      # a key of SCHEDULES
    plans: str = "nnUNetPlans"
    pretrain_plans: Optional[str] = None           # None: ``plans`` for self pre-training, else nnUNetPlans
    report_only: bool = False
    init_seeds: Tuple[int, ...] = (0,)
    pretrained_weights: Mapping[str, str] = field(default_factory=dict)  # arm -> checkpoint instead of pre-training
    note: str = ""                                 # printed with the table
    results_folder: Optional[str] = None           # None: WORK_FOLDER/results

    def __post_init__(self):
        for name in ("folds", "fractions", "arms", "init_seeds"):  # lists from argparse, tuples here
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "pretrained_weights", dict(self.pretrained_weights))
        problems = self.problems()
        if problems:
            raise BenchmarkError("; ".join(problems))

    def problems(self) -> List[str]:
        """Each field that cannot be run, named with why (what needs the dataset is checked by ``resolve``)."""
        problems = []
        unknown = [arm for arm in self.arms if arm not in ARM_CHOICES]
        if unknown:  # a misspelt pre-trained arm would otherwise fine-tune from random weights under its name
            problems.append(f"arms: unknown arms {unknown}: choose from {ARM_CHOICES}")
        if not self.arms or len(set(self.arms)) < len(self.arms):
            problems.append(f"arms: give each arm once, got {list(self.arms)}")
        if SCRATCH_DEFAULT in self.arms and self.schedule == "default":
            problems.append(f"arms: {SCRATCH_DEFAULT} is scratch at the default schedule: it differs from the "
                            "scratch arm only with another --schedule")
        wanting = [arm for arm in (GIVEN, GIVEN_SCRATCH) if arm in self.arms]
        if wanting and GIVEN not in self.pretrained_weights:
            problems.append(f"arms: {' and '.join(wanting)} need the weights: --pretrained-weights {GIVEN}=FILE (an "
                            "nnssl checkpoint, or a Primus or ResEnc pre-training)")
        if self.budget not in BUDGETS:
            problems.append(f"budget: {self.budget!r} is not one of {sorted(BUDGETS)}")
        if self.schedule not in SCHEDULES:
            problems.append(f"schedule: {self.schedule!r} is not one of {sorted(SCHEDULES)}")
        if not self.folds or min(self.folds) < 0 or len(set(self.folds)) < len(self.folds):
            problems.append(f"folds: give distinct folds of 0 or more, got {list(self.folds)}")
        if not self.fractions or not all(0 < fraction <= 1 for fraction in self.fractions):
            problems.append(f"fractions: label fractions must lie in (0, 1], got {list(self.fractions)}")
        if not self.init_seeds or min(self.init_seeds) < 0 or len(set(self.init_seeds)) < len(self.init_seeds):
            problems.append(f"init_seeds: --init-seed takes distinct seeds of 0 or more, got {list(self.init_seeds)}")
        if self.seed < 0:
            problems.append(f"seed: {self.seed} is not a seed (0 or more)")
        if self.device not in (None, "cpu", "cuda", "mps"):
            problems.append(f"device: {self.device!r} is not cpu, cuda or mps")
        return problems

    def title(self, inputs: "BenchmarkInputs", pretrains: bool) -> str:
        """The results table's title: what was run, in one line (``pretrains``: some arm was pre-trained)."""
        pretraining = (f", pre-trained on {inputs.pretrain_dataset_name} ({inputs.pretrain_plans})"
                       if pretrains and inputs.pretrain_dataset_name != inputs.dataset_name else "")
        seeds = " ".join(map(str, self.init_seeds))
        init = "" if self.init_seeds == (0,) else f", init seed{'s' if len(self.init_seeds) > 1 else ''} {seeds}"
        return (f"{inputs.dataset_name}, {self.plans} {self.configuration}, budget '{self.budget}', schedule "
                f"{self.schedule}, folds {list(self.folds)}, seed {self.seed}{init}{pretraining}"
                + (f"; {self.note}" if self.note else ""))


@dataclass(frozen=True)
class BenchmarkInputs:
    dataset_name: str
    pretrain_dataset_name: str
    pretrain_plans: str
    source: str               # the dataset's preprocessed folder (only read)
    data_folder: str          # its preprocessed cases of the configuration
    class_names: Dict[str, str]
    base_splits: List[dict]   # nnU-Net's folds of the dataset
    given_weights: Dict[str, GivenWeights]
    device: str


def check_given_network(weights: GivenWeights, dataset_name: str, spec: BenchmarkSpec) -> None:
    """The given arms' trainer exists at this budget, and a residual-encoder file meets a plan of that network (the
    arms share --plans): a BenchmarkError before any run otherwise. Whether the tensors fit is the load's check."""
    from nnunet_mim import variants
    if not hasattr(variants, weights.trainer):
        raise BenchmarkError(f"budget '{spec.budget}' has no trainer for the given weights' network "
                             f"({weights.trainer} does not exist)")
    if weights.trainer.startswith("nnUNetTrainerStockCNN"):
        config = load_json(plans_file(dataset_name, spec.plans))["configurations"].get(spec.configuration, {})
        network = (config.get("architecture") or {}).get("network_class_name", "")
        if not network.endswith("ResidualEncoderUNet"):
            raise BenchmarkError(f"--pretrained-weights {GIVEN}=...: {weights.description} fine-tunes on a plan of "
                                 f"that network, and {spec.plans} builds {network or 'another network'}: plan one "
                                 "(nnUNetv2_plan_experiment -d DATASET -pl nnUNetPlannerResEncL) and run the "
                                 "benchmark with -p nnUNetResEncUNetLPlans")


def resolve(spec: BenchmarkSpec) -> BenchmarkInputs:
    """What ``spec`` names, found in nnU-Net's folders; a BenchmarkError naming what is missing."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    for variable in ("nnUNet_raw", "nnUNet_preprocessed"):
        if variable not in os.environ:
            raise BenchmarkError(f"{variable} is not set: the benchmark reads the dataset from nnU-Net's folders")
    try:
        dataset_name = maybe_convert_to_dataset_name(spec.dataset)
        pretrain_dataset_name = maybe_convert_to_dataset_name(spec.pretrain_dataset or spec.dataset)
    except RuntimeError as error:  # nnU-Net's "Could not find a dataset with the ID ..."
        raise BenchmarkError(str(error)) from error
    # another pre-training dataset has its own plans: a collection only ever has nnUNetPlans
    pretrain_plans = spec.pretrain_plans or (spec.plans if pretrain_dataset_name == dataset_name else "nnUNetPlans")
    check_plans_file(pretrain_dataset_name, pretrain_plans)
    source = os.path.join(os.environ["nnUNet_preprocessed"], dataset_name)
    data_folder = preprocessed_data_folder(dataset_name, spec.plans, spec.configuration)
    splits = cross_validation_splits(source, data_folder)
    if max(spec.folds) >= len(splits):
        raise BenchmarkError(f"folds {list(spec.folds)}: {dataset_name}'s split has folds 0-{len(splits) - 1}")
    from nnunet_mim import variants
    for arm in ("scratch", "MiM"):
        if not hasattr(variants, arm_trainer(BUDGETS[spec.budget], spec.schedule, arm)):
            raise BenchmarkError(f"budget '{spec.budget}' has no '{spec.schedule}' schedule "
                                 f"({arm_trainer(BUDGETS[spec.budget], spec.schedule, arm)} does not exist)")
    given = {arm: given_pretrained_weights(arm, path, spec.arms, BUDGETS[spec.budget])
             for arm, path in spec.pretrained_weights.items()}
    if GIVEN in given:
        check_given_network(given[GIVEN], dataset_name, spec)
    device = spec.device
    if device is None:
        import torch
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return BenchmarkInputs(dataset_name, pretrain_dataset_name, pretrain_plans, source, data_folder,
                           class_names(load_json(os.path.join(source, "dataset.json"))["labels"]), splits, given,
                           device)

