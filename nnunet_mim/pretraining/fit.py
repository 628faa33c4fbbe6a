"""``nnunet-mim pretrain-plan``: what the pre-training trainers will run on a GPU of a given size, before a
job is queued. The same prediction and the same choice as the trainers' own (``memory.choose_micro_batch``),
from a dataset's plans or from a patch and batch given directly."""
import json
import os
from typing import List, Optional, Sequence, Tuple

from nnunet_mim.pretraining.memory import GIB, DoesNotFit, choose_micro_batch, usable_bytes
from nnunet_mim.pretraining.recipe import PretrainingRecipe


def plans_patch_and_batch(dataset: str, plans: str, configuration: str) -> Tuple[str, List[int], int]:
    """(dataset name, planned patch, planned batch) of a planned dataset's configuration."""
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    preprocessed = os.environ.get("nnUNet_preprocessed")
    if not preprocessed:
        raise FileNotFoundError("nnUNet_preprocessed is not set: set it, or give --patch and --batch instead of a "
                                "dataset")
    name = maybe_convert_to_dataset_name(dataset)
    path = os.path.join(preprocessed, name, plans + ".json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no plans {path}: plan the dataset first (nnUNetv2_plan_and_preprocess -d "
                                f"{dataset}), or name the plans you have with -p")
    with open(path) as f:
        config = json.load(f)["configurations"]
    if configuration not in config:
        raise ValueError(f"configuration {configuration!r} is not in {path} (it has {sorted(config)})")
    entry, seen = dict(config[configuration]), {configuration}
    while entry.get("inherits_from"):  # nnU-Net's inherited configurations: the parent's values, then its own
        parent = entry.pop("inherits_from")
        if parent in seen or parent not in config:
            raise ValueError(f"configuration {configuration!r} of {path} inherits from {parent!r}, which it cannot")
        seen.add(parent)
        entry = {**config[parent], **entry}
    if "patch_size" not in entry or "batch_size" not in entry:
        raise ValueError(f"configuration {configuration!r} of {path} has no patch_size and batch_size")
    return name, list(entry["patch_size"]), int(entry["batch_size"])


def fit_rows(trainers: Sequence[type], planned_patch: Sequence[int], plan_batch: int, memories_gib: Sequence[float],
             input_channels: int = 1) -> Tuple[List[str], List[str]]:
    """(Markdown table rows, refusals) of each trainer on each memory size."""
    from nnunet_mim.architecture.presets import preset_kwargs
    from nnunet_mim.plans import round_patch_size
    rows, refusals = [], []
    for trainer in trainers:
        levels = trainer.levels
        patch = round_patch_size(planned_patch, levels.patch_multiple)
        network = {**preset_kwargs(trainer.encoder_preset), **trainer.alignment_kwargs()}  # as the trainer builds it
        effective = PretrainingRecipe(plan_batch, trainer.effective_batch, trainer.base_lr).effective_batch
        for gib in memories_gib:
            label = (f"| {trainer.__name__} | {'x'.join(map(str, patch))} | {sum(levels.volumes_per_crop)} | "
                     f"{gib:g} ({usable_bytes(gib * GIB) / GIB:.1f}) |")
            try:
                step = choose_micro_batch(network, levels, patch, plan_batch, gib * GIB, input_channels)
            except DoesNotFit as error:
                rows.append(f"{label} does not fit | | | |")
                refusals.append(f"{trainer.__name__}, {gib:g} GiB: {error}")
                continue
            accumulation = effective // step.micro_batch
            rows.append(f"{label} {step.micro_batch} x {accumulation} = {effective} | "
                        f"{'yes' if step.checkpointing else 'no'} | {step.total / GIB:.1f} | "
                        f"{step.saved / GIB:.1f} + {step.transient / GIB:.1f} + {step.static / GIB:.2f} |")
    return rows, refusals


TABLE_HEAD = ["| trainer | pre-training patch | volumes / sample | GPU GiB (usable) | micro-batch x accumulation = "
              "effective batch | conv blocks checkpointed | predicted peak (GiB) | saved + transient + weights and "
              "optimizer (GiB) |", "|---|---|---|---|---|---|---|---|"]


def pretrain_plan(dataset: Optional[str], plans: str, configuration: str, patch: Optional[Sequence[int]],
                  batch: Optional[int], memories_gib: Sequence[float], trainer_names: Sequence[str]) -> int:
    from nnunet_mim.pretraining.trainer import nnUNetTrainerMiMPretrain
    from nnunet_mim.variants import CPU_BUDGET_TRAINERS, USER_TRAINERS
    known = {name: t for name, t in {**USER_TRAINERS, **CPU_BUDGET_TRAINERS}.items()
             if issubclass(t, nnUNetTrainerMiMPretrain)}
    unknown = [t for t in trainer_names if t not in known]
    if unknown:
        raise ValueError(f"not a pre-training trainer of nnunet-mim: {', '.join(unknown)} (known: "
                         f"{', '.join(sorted(known))})")
    if any(not m > 0 for m in memories_gib):
        raise ValueError(f"--gpu-memory {' '.join(map(str, memories_gib))}: give GiB as positive numbers")
    if dataset is not None:
        name, planned, plan_batch = plans_patch_and_batch(dataset, plans, configuration)
        title = f"{name}, {plans}, {configuration}: planned patch {planned}, batch {plan_batch}"
    else:
        planned, plan_batch = list(patch), batch
        title = f"patch {planned}, batch {plan_batch}"
    if plan_batch < 1 or any(p < 1 for p in planned):
        raise ValueError(f"patch {planned} and batch {plan_batch} must be positive")
    trainers = [known[t] for t in trainer_names]
    rows, refusals = fit_rows(trainers, planned, plan_batch, memories_gib)
    print(f"{title}; bf16 autocast. Predicted peak memory of one pre-training step (pretraining/memory.py):\n")
    print("\n".join(TABLE_HEAD + rows))
    for refusal in refusals:
        print(f"\n{refusal}")
    return 1 if refusals else 0
