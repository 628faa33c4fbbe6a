"""Trainer variants, named the nnU-Net way: ``<Trainer>_<variant>``, e.g. ``nnUNetTrainerMAEPretrain_T_CPUbench``
or ``nnUNetTrainerMiMScratch_T_CPUxlong_DecoderFirst``.

A variant is a trainer with a few class attributes changed; the settings are the small classes below
(a preset, a length, a CPU budget, a fine-tuning schedule), each written once. nnU-Net finds a trainer
by its class name, so ``add_variants`` makes every pairing a module-level class here. Two folders
re-export them: ``trainers/`` the ones users run (``USER_TRAINERS``, listed by ``nnunet-mim trainers``),
``cpu_budget_trainers/`` the CPU budgets that exist for the demo, the tests and the CPU benchmarks
(``CPU_BUDGET_TRAINERS``), which ``nnunet-mim demo`` and ``nnunet-mim benchmark`` add to nnU-Net's
search path themselves. Every fine-tuning variant has its scratch twin.

The CPU budgets (``_T_CPU*``, ``_CPU*``) use the tiny preset and run on a laptop CPU; they show that
the pipeline works, not what the method can do.
"""
import math
from dataclasses import replace
from typing import Dict, List, Sequence

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

from nnunet_mim.backbones import BACKBONES, DEFAULT as DEFAULT_BACKBONE
from nnunet_mim.backbones.primus import PRIMUS_SIZES, PrimusBackbone
from nnunet_mim.finetuning.plan_match import PlanMatchCheck
from nnunet_mim.finetuning.primus import nnUNetTrainerPrimusFinetune
from nnunet_mim.finetuning.trainer import nnUNetTrainerMiMFinetune, nnUNetTrainerMiMScratch
from nnunet_mim.methods import METHODS, trainer_class
from nnunet_mim.pretraining.trainer import nnUNetTrainerMiMPretrain
from nnunet_mim.run_length import RunLengthFromClassAttributes


# what a trainer's method decides and a settings class shared by several methods must not override: MiM's levels
# given to MAE crash it, and a method name changed records another method in the checkpoint
OWNED_BY_THE_METHOD = ("levels", "method", "reconstruction_weights")


def add_variants(bases: Sequence[type], settings: Dict[str, type]) -> List[type]:
    """``<base>_<suffix>`` for every base and every ``suffix: settings class`` pair; returns them. A settings
    class may not set what the base's method owns (``OWNED_BY_THE_METHOD``)."""
    made = []
    for suffix, setting in settings.items():
        owned = [name for name in OWNED_BY_THE_METHOD if name in vars(setting)]
        if owned:
            raise TypeError(f"settings {setting.__name__} (variant _{suffix}) sets {', '.join(owned)}, which each "
                            f"method owns ({', '.join(b.__name__ for b in bases)}): change them in a subclass of the "
                            "one method's trainer instead")
    for base in bases:
        for suffix, setting in settings.items():
            name = f"{base.__name__}_{suffix}"
            globals()[name] = type(name, (setting, base), {"__module__": __name__, "__qualname__": name})
            made.append(globals()[name])
    return made


def by_name(trainers: Sequence[type]) -> Dict[str, type]:
    return {trainer.__name__: trainer for trainer in trainers}


class PresetS:
    encoder_preset = "S"


# ---- pre-training ----------------------------------------------------------------------------
class Pretrain100Epochs:
    epochs, warmup_epochs = 100, 10


class PaperRecipe:
    """The MiM paper's recipe: 128 real crops per optimizer step (its 2 GPUs x 64 accumulation steps x batch 1;
    its sw_batch_size of 4 is unused by its loader, and its lr rule counts 512), lr 2e-4, and 800 passes over the
    training images with 40 of warm-up, then cosine: the paper's number of optimizer steps for the dataset it
    runs on (800 x cases / 128), in nnU-Net epochs of ``optimizer_steps_per_epoch`` steps."""
    effective_batch, base_lr = 128, 2e-4 * 256 / 128
    passes, warmup_passes = 800, 40

    def run_length(self):
        training_cases = len(self.do_split()[0])
        per_epoch = self.recipe.effective_batch * self.optimizer_steps_per_epoch  # crops
        epochs = max(1, math.ceil(self.passes * training_cases / per_epoch))
        return epochs, max(1, round(self.warmup_passes * training_cases / per_epoch))


class PretrainCPUDemoBudget:
    """The built-in demo's pre-training: preset T, 8 epochs of 25 steps, the default recipe."""
    encoder_preset, epochs, warmup_epochs, iterations_per_epoch, val_iterations_per_epoch = "T", 8, 1, 25, 2


class PretrainCPUSmokeBudget(PretrainCPUDemoBudget):
    """Two epochs of two steps: the end-to-end tests."""
    epochs, iterations_per_epoch, val_iterations_per_epoch = 2, 2, 1


class PretrainCPUBenchBudget(PretrainCPUDemoBudget):
    """The CPU benchmark's pre-training: 100 epochs of 25 steps. The demo's 200 steps leave the
    reconstruction loss still falling fast (MNI example: MAE 1.08 -> 0.86 in 8 epochs), so its
    encoder has learnt next to nothing to transfer."""
    epochs, warmup_epochs = 100, 10


class PretrainCPUBench300Budget(PretrainCPUBenchBudget):
    """Three times the CPU benchmark's pre-training (300 epochs of 25 steps, the same warm-up
    share): does a longer pre-training move the fine-tuned result? On the Colin27 lobes example
    MiM's training loss went 1.35 -> 1.14 over the second half of its 100 epochs, levelling only as
    the cosine learning rate reached zero."""
    epochs, warmup_epochs = 300, 30


class PretrainCPUBench25Budget(PretrainCPUBenchBudget):
    """A quarter of the CPU benchmark's pre-training (25 epochs of 25 steps, the same warm-up
    share), for MiM at its design point: at 64^3, where an L1 octant is 2 tokens per axis, a MiM
    step costs 8-12x a 32^3 step on a 2-core CPU (benchmarks/pretrain.py, two runs), so 100
    epochs would take about 4 hours."""
    epochs, warmup_epochs = 25, 3


PRETRAINING_TRAINERS = tuple(trainer_class(m) for m in METHODS.values())  # the registry's (nnunet_mim/methods.py)
globals().update(by_name(PRETRAINING_TRAINERS))  # beside their variants, as nnU-Net's search finds them
PRETRAINING_USER = [*PRETRAINING_TRAINERS, *add_variants(PRETRAINING_TRAINERS, {
    "100ep": Pretrain100Epochs, "S": PresetS, "PaperRecipe": PaperRecipe})]
PRETRAINING_CPU_BUDGETS = add_variants(PRETRAINING_TRAINERS, {
    "T_CPUdemo": PretrainCPUDemoBudget, "T_CPUsmoke": PretrainCPUSmokeBudget, "T_CPUbench": PretrainCPUBenchBudget,
    "T_CPUbench300": PretrainCPUBench300Budget, "T_CPUbench25": PretrainCPUBench25Budget})

# every method on every other backbone (nnunet_mim/backbones/; the methods' own trainers are the hybrid's); a CPU
# budget sets the length and the preset, which is Primus's size (T: tiny) and nothing to ResEnc, whose network is
# the plan's
BACKBONE_TRAINERS = tuple(type(f"{trainer.__name__}_{name}", (backbone, trainer),
                               {"__module__": __name__, "__qualname__": f"{trainer.__name__}_{name}",
                                "levels": backbone.backbone_levels(trainer.levels)})
                          for name, backbone in BACKBONES.items() if name != DEFAULT_BACKBONE
                          for trainer in PRETRAINING_TRAINERS)
globals().update(by_name(BACKBONE_TRAINERS))
PRETRAINING_USER += BACKBONE_TRAINERS
PRETRAINING_CPU_BUDGETS += add_variants(BACKBONE_TRAINERS, {"CPUsmoke": PretrainCPUSmokeBudget})

# MiM with fewer sub-volumes, on every network: 1+2+2 volumes per crop instead of the paper's 1+4+16 (two of the
# four hidden L1 octants cut out as L2 volumes, one hidden L2 region each as L3); docs/method.md has the costs
FEWER_SUBVOLUMES = tuple(type(f"{trainer.__name__}_Sub122", (trainer,),
                              {"__module__": __name__, "__qualname__": f"{trainer.__name__}_Sub122",
                               "levels": replace(trainer.levels, l2_per_l1=2, l3_per_l2=1)})
                         for trainer in (*PRETRAINING_TRAINERS, *BACKBONE_TRAINERS) if trainer.levels.num_levels == 3)
globals().update(by_name(FEWER_SUBVOLUMES))
PRETRAINING_USER += FEWER_SUBVOLUMES
PRETRAINING_CPU_BUDGETS += add_variants([t for t in FEWER_SUBVOLUMES if issubclass(t, PrimusBackbone)],
                                        {"CPUsmoke": PretrainCPUSmokeBudget})


# ---- fine-tuning and its matched scratch baseline ----------------------------------------------
class Finetune100Epochs:
    epochs = 100


class Finetune250Epochs:
    epochs = 250


class FinetuneCPUDemoBudget:
    """The built-in demo's fine-tuning: preset T, 10 epochs of 20 steps, no test-time mirroring
    (8x cheaper validation and prediction).

    lr 3e-3: with the default 3e-4 the tiny network labelled all brain grey matter after these
    200 steps and never found white matter (MNI example, 100% labels, fold 0, mean Dice 0.355);
    1e-3 gave 0.703 and 3e-3 0.779 (scratch arm, docs/benchmarks.md)."""
    encoder_preset, epochs, iterations_per_epoch, val_iterations_per_epoch = "T", 10, 20, 2
    peak_lr = 3e-3
    test_time_mirroring = False
    # nnU-Net's 50 would mean no checkpoint_latest.pth at all in these short runs: a killed run
    # then continues (--c) from checkpoint_best.pth and redoes every epoch since the best one
    checkpoint_every = 5


class FinetuneCPUSmokeBudget(FinetuneCPUDemoBudget):
    """One epoch of two steps: the end-to-end tests."""
    epochs, iterations_per_epoch, val_iterations_per_epoch = 1, 2, 1


class FinetuneCPULongBudget(FinetuneCPUDemoBudget):
    """The benchmark's `cpu-long` fine-tuning: 30 epochs of 20 steps. On the Colin27 lobes example
    (8 classes decided by position) the 200 steps of `cpu` left every arm at 0.11-0.17 mean Dice
    on fold 0, with most classes never predicted."""
    epochs = 30


class FinetuneCPUXLongBudget(FinetuneCPUDemoBudget):
    """The benchmark's `cpu-xlong` fine-tuning: 60 epochs of 20 steps, twice `cpu-long`. At 600 steps
    scratch gained 0.9 Dice points from 25% to 100% labels on MNI152 lobes and lost the temporal
    lobe at 100% (docs/benchmarks.md): the steps, not the labels, limited every arm. At 1200 steps
    scratch reached 0.791 mean Dice there at 25% labels (0.575 at 600), every lobe found."""
    epochs = 60


class FinetuneCPUXXLongBudget(FinetuneCPUDemoBudget):
    """The benchmark's `cpu-xxlong` fine-tuning: 120 epochs of 20 steps, twice `cpu-xlong`. At 1200 steps
    the raw pseudo-Dice of every arm was flat over the last epochs, but under a learning rate falling to
    zero, which does not show convergence: at 2400 steps every run rose by 2-8 Dice points (Colin27
    lobes, 10% labels, five folds, scratch and MiM; docs/benchmarks.md)."""
    epochs = 120


FINETUNING_TRAINERS = (nnUNetTrainerMiMFinetune, nnUNetTrainerMiMScratch)
FINETUNING_USER = [*FINETUNING_TRAINERS, *add_variants(FINETUNING_TRAINERS, {
    "100ep": Finetune100Epochs, "250ep": Finetune250Epochs, "S": PresetS})]
FINETUNING_CPU_BUDGETS = add_variants(FINETUNING_TRAINERS, {
    "T_CPUdemo": FinetuneCPUDemoBudget, "T_CPUsmoke": FinetuneCPUSmokeBudget, "T_CPUlong": FinetuneCPULongBudget,
    "T_CPUxlong": FinetuneCPUXLongBudget, "T_CPUxxlong": FinetuneCPUXXLongBudget})


# ---- fine-tuning schedules (compared in docs/benchmarks.md), on every fine-tuning variant ---------
class LayerDecay:
    """Layer-wise lr decay 0.75 (BEiT / MAE fine-tuning practice)."""
    layer_decay = 0.75


class DecoderFirst:
    """The pre-trained encoder waits 10% of the epochs while the new decoder warms up."""
    encoder_frozen_fraction = 0.1


class FrozenEncoder:
    """The pre-trained encoder never trains: only the full-resolution stem, the U-Net decoder and the
    heads learn. A probe of what the pre-trained features hold, not a way to fine-tune: its scratch
    twin reads the features of a random encoder, so the two differ only in what pre-training learnt."""
    encoder_frozen_fraction = 1.0


FINETUNING_SCHEDULES = {"LayerDecay": LayerDecay, "DecoderFirst": DecoderFirst, "FrozenEncoder": FrozenEncoder}
FINETUNING_USER += add_variants(list(FINETUNING_USER), FINETUNING_SCHEDULES)
FINETUNING_CPU_BUDGETS += add_variants(list(FINETUNING_CPU_BUDGETS), FINETUNING_SCHEDULES)


# ---- stock nnU-Net CNN at the same CPU budgets (the reference arm of the benchmark) ---------------
class nnUNetTrainerStockCNN(PlanMatchCheck, RunLengthFromClassAttributes, nnUNetTrainer):
    """nnU-Net's own trainer, its length set by the class attributes the hybrid trainers use, so that
    a CPU fine-tuning budget applies to it unchanged. The defaults are nnU-Net's. Importing it (as nnUNetv2_train
    does to find it) puts this plugin's -pretrained_weights loader in place: the file read without running code,
    one-channel files widened to the dataset's channels (pretrained_loading.py), a spacing or normalisation other
    than the file's pre-training warned of (plan_match.py); plain nnUNetTrainer reads the file with nnU-Net's own
    loader."""


# users fine-tune the networks of nnU-Net's own plans (ResEnc pre-training, nnssl files) with it, and Primus with
# its own trainer (finetuning/primus.py)
PRIMUS_SIZED = add_variants([nnUNetTrainerPrimusFinetune], {
    size: type(f"PrimusSize{size}", (), {"primus_size": size}) for size in PRIMUS_SIZES})  # _T, _S, _B, _M, _L
FINETUNING_USER += [nnUNetTrainerStockCNN, nnUNetTrainerPrimusFinetune,  # _M: the default size, named
                    *[t for t in PRIMUS_SIZED if t.primus_size != "T"],
                    # the gpu budget's lengths: nnU-Net's CNN (the given arm of a ResEnc file) and every Primus size
                    *add_variants([nnUNetTrainerStockCNN, *PRIMUS_SIZED], {"250ep": Finetune250Epochs})]
# the budgets' encoder preset and lr are the hybrid network's; nnU-Net's CNN keeps its own
STOCK_CPU_BUDGETS = [*add_variants([nnUNetTrainerStockCNN], {
    "CPUdemo": FinetuneCPUDemoBudget, "CPUsmoke": FinetuneCPUSmokeBudget, "CPUlong": FinetuneCPULongBudget,
    "CPUxlong": FinetuneCPUXLongBudget, "CPUxxlong": FinetuneCPUXXLongBudget}),
    # Primus of every size (T, tiny, for the tests) at every CPU length: the benchmark's given arms
    *[t for t in PRIMUS_SIZED if t.primus_size == "T"], *add_variants(PRIMUS_SIZED, {
        "CPUdemo": FinetuneCPUDemoBudget, "CPUsmoke": FinetuneCPUSmokeBudget, "CPUlong": FinetuneCPULongBudget,
        "CPUxlong": FinetuneCPUXLongBudget, "CPUxxlong": FinetuneCPUXXLongBudget})]

USER_TRAINERS = by_name([*PRETRAINING_USER, *FINETUNING_USER])
CPU_BUDGET_TRAINERS = by_name([*PRETRAINING_CPU_BUDGETS, *FINETUNING_CPU_BUDGETS, *STOCK_CPU_BUDGETS])


def describe_trainer(trainer: type) -> str:
    """One line: what the trainer does, at which preset, for how long, with which schedule."""
    if issubclass(trainer, nnUNetTrainerMiMPretrain):
        method = f"{trainer.method} pre-training" + (" without alignment" if trainer.method == "MiM"
                                                     and trainer.alignment_weight == 0 else "")
        backbone = next(c for c in trainer.__mro__ if c in BACKBONES.values())  # the first mixed in
        network = backbone.description.format(preset=trainer.encoder_preset)
        if trainer.levels.num_levels == 3:
            method += f" ({'+'.join(map(str, trainer.levels.volumes_per_crop))} volumes per crop)"
        return (f"{method}, {network}, {trainer.epochs} epochs x "
                f"{trainer.iterations_per_epoch} steps, effective batch {trainer.effective_batch}")
    if issubclass(trainer, nnUNetTrainerPrimusFinetune):
        return (f"Primus-{trainer.primus_size} fine-tuning (or from scratch without -pretrained_weights), "
                f"{trainer.epochs} epochs; loads nnssl and this plugin's Primus pre-training")
    if not issubclass(trainer, nnUNetTrainerMiMFinetune):
        return ("nnU-Net's own trainer on the plan's own network (e.g. -p nnUNetResEncUNetMPlans), -pretrained_weights "
                "read without running code")
    role = "from scratch" if issubclass(trainer, nnUNetTrainerMiMScratch) else "fine-tuning"
    schedule = ("frozen encoder (a probe)" if trainer.encoder_frozen_fraction == 1 else
                f"decoder first for {trainer.encoder_frozen_fraction:.0%}" if trainer.encoder_frozen_fraction else
                f"layer decay {trainer.layer_decay}" if trainer.layer_decay != 1 else "default schedule")
    return f"{role}, preset {trainer.encoder_preset}, {trainer.epochs} epochs, {schedule}"


def trainer_list() -> str:
    """The trainers a user runs, one line each (`nnunet-mim trainers`)."""
    width = max(map(len, USER_TRAINERS)) + 2
    lines = ["Pre-training, labels unused:  nnUNetv2_train DATASET 3d_fullres all -tr TRAINER"]
    lines += [f"  {name:<{width}}{describe_trainer(t)}" for name, t in by_name(PRETRAINING_USER).items()]
    lines += ["", "Fine-tuning:  nnUNetv2_train DATASET 3d_fullres FOLD -tr TRAINER -pretrained_weights FILE",
              "(each has a matched from-scratch twin, the same name with Scratch for Finetune, run without "
              "-pretrained_weights)"]
    lines += [f"  {name:<{width}}{describe_trainer(t)}" for name, t in by_name(FINETUNING_USER).items()
              if not issubclass(t, nnUNetTrainerMiMScratch)]
    lines += ["", f"Not listed: {len(CPU_BUDGET_TRAINERS)} CPU budgets of the demo, the tests and the CPU benchmarks "
              "(_T_CPU*, _CPU*); nnunet-mim demo and benchmark find them, eval \"$(nnunet-mim env --cpu-budgets)\" "
              "makes nnUNetv2_train find them too."]
    return "\n".join(lines)
