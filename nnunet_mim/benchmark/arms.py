"""The arms of a benchmark: which trainers each budget runs for each arm, the schedules, and pre-trained
weights a user gives an arm instead of its pre-training."""
import hashlib
import os
from dataclasses import dataclass
from typing import Dict, Sequence, Tuple

from nnunet_mim.benchmark.plan import BenchmarkError
from nnunet_mim.finetuning.checkpoint import load_checkpoint, pretraining_checkpoint_record
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


def pretraining_trainers(variant: str) -> Dict[str, str]:
    """method -> pre-training trainer of one variant suffix (nnunet_mim/variants.py), e.g. "_100ep", for every
    method of the registry (nnunet_mim/methods.py)."""
    return {m.name: m.trainer + variant for m in METHODS.values()}


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
ARMS = ["nnU-Net", "scratch", *METHODS]  # the arms run unless --arms says otherwise
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
