"""The arms of a benchmark: which trainers each budget runs for each arm, the schedules, and pre-trained
weights a user gives an arm instead of its pre-training."""
import hashlib
import os
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

from nnunet_mim.benchmark.plan import BenchmarkError
from nnunet_mim.checkpointing import shown
from nnunet_mim.finetuning.checkpoint import load_checkpoint, pretraining_checkpoint_record, trained_architecture
from nnunet_mim.methods import METHODS


@dataclass(frozen=True)
class Budget:
    stock: str
    scratch: str
    finetune: str
    pretrain: Dict[str, str]  # method -> pre-training trainer
    # names the pre-trained arms' results folders when this budget fine-tunes like another one but
    # pre-trains otherwise, so one work folder never reuses fine-tuned runs of the other pre-training
    pretrain_label: str = ""
    # the suffix of its fine-tuning length (nnunet_mim/variants.py): the given arms' trainers of other networks
    length: str = ""


def pretraining_trainers(variant: str) -> Dict[str, str]:
    """method -> pre-training trainer of one variant suffix (nnunet_mim/variants.py), e.g. "_100ep", for every
    method of the registry (nnunet_mim/methods.py)."""
    return {m.name: m.trainer + variant for m in METHODS.values()}


def cpu_budget(length: str, pretraining: str, pretrain_label: str = "") -> Budget:
    """A CPU budget: the fine-tuning trainers of one CPU length (nnunet_mim/variants.py), e.g. "CPUlong", and the
    pre-training trainers of one variant suffix, e.g. "_T_CPUbench"."""
    return Budget(f"nnUNetTrainerStockCNN_{length}", f"nnUNetTrainerMiMScratch_T_{length}",
                  f"nnUNetTrainerMiMFinetune_T_{length}", pretraining_trainers(pretraining), pretrain_label, length)


BUDGETS = {
    "smoke": cpu_budget("CPUsmoke", "_T_CPUsmoke"),
    "cpu": cpu_budget("CPUdemo", "_T_CPUbench"),
    "cpu-long": cpu_budget("CPUlong", "_T_CPUbench"),
    "cpu-xlong": cpu_budget("CPUxlong", "_T_CPUbench"),
    "cpu-xxlong": cpu_budget("CPUxxlong", "_T_CPUbench"),
    "cpu-long-pretrain300": cpu_budget("CPUlong", "_T_CPUbench300", pretrain_label="pretrain300ep"),
    "cpu-xlong-pretrain300": cpu_budget("CPUxlong", "_T_CPUbench300", pretrain_label="pretrain300ep"),
    # for a plan whose patch is 64^3 or more (e.g. --pretrain-dataset at a finer spacing), where MiM's
    # octants are 2 tokens per axis and a step costs 8-12x a 32^3 one on the CPU
    "cpu-long-pretrain25": cpu_budget("CPUlong", "_T_CPUbench25", pretrain_label="pretrain25ep"),
    "gpu": Budget("nnUNetTrainer_250epochs", "nnUNetTrainerMiMScratch_250ep", "nnUNetTrainerMiMFinetune_250ep",
                  pretraining_trainers("_100ep"), length="250ep"),
}
ARMS = ["nnU-Net", "scratch", *METHODS]  # the arms run unless --arms says otherwise
# weights of another network given to the benchmark (an nnssl checkpoint, a ResEnc or Primus pre-training): "given"
# fine-tunes them on their own network, "given-scratch" trains that network from random weights, the matched baseline
GIVEN, GIVEN_SCRATCH = "given", "given-scratch"
# Scratch at the default fine-tuning schedule whatever --schedule says. A schedule made for
# pre-trained weights (decoder-first freezes the encoder at first) can cost a random network
# (docs/experiments/20-the-default-schedule-at-1200-steps.md). This arm puts scratch at its own
# schedule in the same table, beside the exactly matched scratch arm.
SCRATCH_DEFAULT = "scratch-default"
ARM_CHOICES = ARMS + [SCRATCH_DEFAULT, GIVEN, GIVEN_SCRATCH]
# fine-tuning schedules: the suffix of their trainer variants (nnunet_mim/variants.py)
# frozen-encoder is a probe, not a way to fine-tune: the encoder never trains, so the pre-trained arms
# and scratch differ only in the features their encoder hands the decoder
SCHEDULES = {"default": "", "layer-decay": "_LayerDecay", "decoder-first": "_DecoderFirst",
             "frozen-encoder": "_FrozenEncoder"}


def arm_trainer(budget: Budget, schedule: str, arm: str) -> str:
    """The trainer an arm runs at a budget. The schedule applies to scratch and the pre-trained arms alike, so
    they still differ only in their initial weights; the stock reference keeps nnU-Net's own, and
    scratch-default the default."""
    if arm == "nnU-Net":
        return budget.stock
    if arm == SCRATCH_DEFAULT:
        return budget.scratch
    return (budget.scratch if arm == "scratch" else budget.finetune) + SCHEDULES[schedule]


@dataclass(frozen=True)
class GivenWeights:
    """A pre-training checkpoint given to a pre-trained arm instead of the benchmark's own pre-training, or to the
    given arms with the trainer of its own network."""
    path: str
    digest: str  # of the file's bytes: names the arm's results folders, so other weights never reuse its runs
    description: str
    trainer: str = ""  # the given arms': the trainer that builds the file's network at the budget's length


def given_network(path: str, checkpoint: dict, budget: Budget) -> Tuple[str, str]:
    """(trainer, description) of the given arms for a file of another network than the hybrid: an nnssl checkpoint
    of Primus or of a residual-encoder U-Net, or this project's Primus or ResEnc pre-training; a BenchmarkError
    naming what it is otherwise."""
    from nnunet_mim.backbones.primus import PRIMUS_SIZES
    plan = checkpoint.get("nnssl_adaptation_plan")
    if isinstance(plan, dict):
        architecture = plan.get("architecture_plans") or {}
        name, kwargs = str(architecture.get("arch_class_name")), architecture.get("arch_kwargs") or {}
        size = {"embed_dim": kwargs.get("embed_dim"), "eva_depth": kwargs.get("encoder_eva_depth"),
                "eva_numheads": kwargs.get("encoder_eva_numheads")}
        origin = f"nnssl checkpoint of {shown(name)}"
    else:
        architecture = trained_architecture(checkpoint)
        name, kwargs = str(architecture.get("network_class_name", "")), architecture.get("arch_kwargs") or {}
        size = {k: kwargs.get(k) for k in ("embed_dim", "eva_depth", "eva_numheads")}
        origin = f"{pretraining_checkpoint_record(path, checkpoint).describe()}, {name.rpartition('.')[2]}"
    sizes = [s for s, preset in PRIMUS_SIZES.items() if preset == size]
    if name in ("PrimusS", "PrimusB", "PrimusM", "PrimusL"):
        sizes = [name[-1]]
    if "Primus" in name and sizes:
        return f"nnUNetTrainerPrimusFinetune_{sizes[0]}_{budget.length}", f"{origin}, Primus-{sizes[0]}"
    if name.endswith(("ResEncL", "ResidualEncoderUNet", "ResEncPretrainNetwork")):
        return f"nnUNetTrainerStockCNN_{budget.length}", f"{origin}, the plan's residual-encoder U-Net"
    raise BenchmarkError(f"--pretrained-weights {GIVEN}={path}: a {origin} is not a network the given arms build "
                         "(Primus of a size of nnunet_mim/backbones/primus.py, or a residual-encoder U-Net on a plan "
                         "of it); a hybrid pre-training goes to the arm of its method (MiM=..., MAE=...)")


def given_weights_of_another_network(path: str, arms: Sequence[str], budget: Budget) -> GivenWeights:
    """--pretrained-weights given=FILE: both given arms run, FILE read safely and its network's trainer found."""
    missing = [arm for arm in (GIVEN, GIVEN_SCRATCH) if arm not in arms]
    if missing:
        raise BenchmarkError(f"--pretrained-weights {GIVEN}=...: add {' and '.join(missing)} to --arms (the weights "
                             f"fine-tuned on their own network, and that network from random weights)")
    try:
        checkpoint = load_checkpoint(path)
        trainer, description = given_network(path, checkpoint, budget)
    except RuntimeError as error:
        raise BenchmarkError(f"--pretrained-weights {GIVEN}=...: {error}") from error
    return GivenWeights(os.path.abspath(path), file_digest(path), description, trainer)


def file_digest(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()[:12]


def given_pretrained_weights(arm: str, path: str, arms: Sequence[str], budget: Budget) -> GivenWeights:
    """--pretrained-weights ARM=FILE, checked before any run: ARM is a pre-trained arm being run, FILE an
    nnunet-mim pre-training checkpoint of that arm's method (so the table never labels one method's
    weights with another's name); or ARM is ``given`` (``given_weights_of_another_network``). Whether it fits the
    dataset's network is checked by the fine-tuning trainer, as for any -pretrained_weights."""
    if arm == GIVEN:
        return given_weights_of_another_network(path, arms, budget)
    if arm not in budget.pretrain:
        raise BenchmarkError(f"--pretrained-weights {arm}=...: {arm} is not a pre-trained arm "
                             f"(those are {', '.join(budget.pretrain)}, and {GIVEN} for weights of another network)")
    if arm not in arms:
        raise BenchmarkError(f"--pretrained-weights {arm}=...: the arm {arm} is not run (add it to --arms)")
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
    return GivenWeights(os.path.abspath(path), file_digest(path), description)
