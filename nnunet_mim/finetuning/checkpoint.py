"""Checks and adaptations of a pre-training checkpoint before nnU-Net's stock loader sees it.

nnU-Net's ``-pretrained_weights`` loader asserts equal shapes for every key and otherwise says
little. ``inspect_pretrained_checkpoint`` runs first (the fine-tuning trainer calls it from
``initialize``) and turns the usual mistakes into errors that say what to do.

Input channels: the only parameters whose shape depends on the number of input channels are the
input projections (``keys_to_in_proj``). ``adapt_input_channels`` rewrites them by one rule:
every new channel's kernel is the mean of the source kernels times (source / target channels),
so an image whose channels are all equal gets exactly the response the pre-trained network gave
to that one image. The result is a new checkpoint file for stock ``-pretrained_weights``.

Encoder transplant: ``transplant_encoder`` puts the encoder of a segmentation model trained with
labels into a pre-training checkpoint, recorded as "supervised" pre-training: fine-tuned from the
result, a run differs from one fine-tuned from the untouched checkpoint only in its encoder (the
frozen-encoder probe's positive control, docs/benchmarks.md).
"""
from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from nnunet_mim.checkpointing import UntrustedCheckpointError, read_checkpoint, shown, unreadable
from nnunet_mim.pretrained_loading import kernel_for_channels
from nnunet_mim.pretraining_record import PretrainingRecord

IN_PROJECTIONS = ("encoder.stem.0.weight", "encoder.stages.0.downsample.0.weight")
ENCODER_PREFIXES = ("encoder.", "decoder.encoder.")  # nnU-Net's decoders keep a reference to their encoder


def load_checkpoint(filename: str, for_loading: bool = False) -> dict:
    """A checkpoint the user gives, read without running code from it (checkpointing.read_checkpoint). With
    ``for_loading``, the read that nnU-Net's -pretrained_weights load then takes instead of reading the file
    again (pretrained_loading.read_once)."""
    from nnunet_mim.pretrained_loading import read_once
    problem = unreadable(filename)
    if problem:
        raise RuntimeError(f"{filename}: {problem} (give the path of a checkpoint_final.pth)")
    try:
        checkpoint = read_once(filename) if for_loading else read_checkpoint(filename)
    except UntrustedCheckpointError:
        raise
    except Exception as e:
        raise RuntimeError(f"cannot read the pre-trained checkpoint {filename}: {e} "
                           "(corrupt or truncated file?)") from e
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("network_weights"), dict):
        raise RuntimeError(f"{filename} is not an nnU-Net checkpoint (it holds no dict of 'network_weights'); "
                           "give the checkpoint_final.pth of a pre-training run")
    return checkpoint


def trained_architecture(checkpoint: dict) -> dict:
    """The ``architecture`` entry (network_class_name, arch_kwargs) of the plan the checkpoint's training saved in
    ``init_args``; {} when the checkpoint holds none (an nnssl file, a hand-made one)."""
    init = checkpoint.get("init_args") if isinstance(checkpoint.get("init_args"), dict) else {}
    try:
        architecture = init["plans"]["configurations"][init["configuration"]]["architecture"]
    except (KeyError, TypeError):
        return {}
    return architecture if isinstance(architecture, dict) else {}


def input_projections(checkpoint: dict) -> Tuple[str, ...]:
    """The weight keys of the input projections of the network a checkpoint holds: an nnssl file's
    ``keys_to_in_proj``, a backbone's (backbones/), or the hybrid's."""
    from nnunet_mim.backbones.primus import PRIMUS_IN_PROJECTIONS
    from nnunet_mim.backbones.resenc import RESENC_IN_PROJECTIONS
    plan = checkpoint.get("nnssl_adaptation_plan")
    if isinstance(plan, dict):
        return tuple(f"{key}.weight" for key in plan.get("keys_to_in_proj") or ())
    network = str(trained_architecture(checkpoint).get("network_class_name", ""))
    for suffix, keys in (("ResEncPretrainNetwork", RESENC_IN_PROJECTIONS), ("PrimusPretrainNetwork",
                                                                            PRIMUS_IN_PROJECTIONS)):
        if network.endswith(suffix):
            return tuple(f"{key}.weight" for key in keys)
    return IN_PROJECTIONS


def in_projection_keys(state_dict: Dict[str, torch.Tensor], projections: Sequence[str] = IN_PROJECTIONS) -> List[str]:
    """The input projections, including the copies under ``decoder.encoder.``."""
    return [k for k in state_dict if any(k == p or k == "decoder." + p for p in projections)]


def fit_problem(keys: Sequence[str], wanted: Dict[str, torch.Tensor],
                offered: Dict[str, torch.Tensor]) -> Optional[str]:
    """What keeps ``offered`` from filling ``keys`` of ``wanted`` (missing or differently shaped
    tensors, with examples); None when it fits."""
    missing = [k for k in keys if k not in offered]
    mismatched = [k for k in keys if k in offered and offered[k].shape != wanted[k].shape]
    if not missing and not mismatched:
        return None
    return (f"{len(missing)} missing and {len(mismatched)} differently shaped tensors, e.g. "
            f"{(missing + mismatched)[:3]}")


def pretraining_record_of(filename: str, checkpoint: dict) -> Optional[PretrainingRecord]:
    """What pre-training recorded in the network weights of ``checkpoint`` (read from ``filename``):
    None for a network never pre-trained; a RuntimeError that says what to do when the checkpoint is
    not one of an nnunet-mim network at all (an nnssl checkpoint in particular)."""
    nnssl_plan = checkpoint.get("nnssl_adaptation_plan")
    if isinstance(nnssl_plan, dict):  # e.g. the OpenMind models: a ResEnc or Primus encoder, not ours
        architecture = shown((nnssl_plan.get("architecture_plans") or {}).get("arch_class_name",
                                                                               "unknown architecture"))
        raise RuntimeError(f"{filename} is an nnssl checkpoint ({architecture}), whose encoder is not this hybrid "
                           "network's. Fine-tune it with nnU-Net's own nnssl route (nnU-Net after 2.8.1: "
                           "nnUNetv2_preprocess_like_nnssl, then nnUNetv2_train_pretrained -tr PretrainedTrainer), "
                           "or pre-train this network with nnUNetTrainerMiMPretrain")
    if "pretraining_record" not in checkpoint["network_weights"]:
        raise RuntimeError(f"{filename} is not an nnunet-mim pre-training checkpoint (written by "
                           "nnUNetTrainerMiMPretrain / nnUNetTrainerMAEPretrain); its network has no "
                           "pretraining_record")
    try:
        return PretrainingRecord.from_tensor(checkpoint["network_weights"]["pretraining_record"])
    except ValueError as error:
        raise RuntimeError(f"{filename}: {error}") from None


def pretraining_checkpoint_record(filename: str, checkpoint: dict) -> PretrainingRecord:
    """What a pre-training checkpoint recorded about itself; a RuntimeError that says what the file is and what
    to do when it is not one (nnssl's, not this plugin's, or a segmentation run's, trained with labels)."""
    record = pretraining_record_of(filename, checkpoint)
    written_by_pretraining = "method" in checkpoint.get("nnunet_mim", {})  # as pre-training and adapt-checkpoint do
    if written_by_pretraining and record is not None:
        return record
    if "init_args" in checkpoint and not written_by_pretraining:
        trainer = shown(checkpoint.get("trainer_name", "an unknown trainer"))
        origin = "from random weights" if record is None else f"from {record.method} pre-training"
        raise RuntimeError(f"{filename} is the checkpoint of a segmentation run ({trainer}, trained with labels "
                           f"{origin}), not of pre-training: give the checkpoint_final.pth of an "
                           "nnUNetTrainerMiMPretrain / nnUNetTrainerMAEPretrain run, or, to start from this run's "
                           "encoder, write one with nnunet-mim adapt-checkpoint PRETRAINING.pth --encoder-from "
                           f"{filename}")
    if record is None:
        raise RuntimeError(f"{filename} holds a network never pre-trained (its pretraining record is empty)")
    raise RuntimeError(f"{filename} was not written by nnunet-mim pre-training (it has no 'nnunet_mim' entry)")


PRESET_TRAINERS = {"B": "nnUNetTrainerMiMFinetune", "S": "nnUNetTrainerMiMFinetune_S",
                   "ResEnc": "nnUNetTrainerStockCNN (nnU-Net's own: nnUNetv2_train ... -p <the ResEnc plans it was "
                             "pre-trained on>)",
                   "T": "nnUNetTrainerMiMFinetune_T_CPUxlong (a CPU budget: eval \"$(nnunet-mim env --cpu-budgets)\")"}


def inspect_pretrained_checkpoint(filename: str, network_state: Dict[str, torch.Tensor],
                                  preset: str) -> Tuple[List[str], dict]:
    """Raise a RuntimeError that says what to do when ``filename`` cannot load into the network;
    otherwise return the keys of its ``network_weights`` and what pre-training recorded about
    itself (the checkpoint's ``nnunet_mim`` entry). The checkpoint read here is the one the load takes."""
    checkpoint = load_checkpoint(filename, for_loading=True)
    weights = checkpoint["network_weights"]
    record = pretraining_checkpoint_record(filename, checkpoint)
    if record.preset != preset:
        raise RuntimeError(f"{filename} holds a preset-{record.preset} encoder, this trainer builds preset {preset}: "
                           f"fine-tune it with a trainer of preset {record.preset}, such as "
                           f"{PRESET_TRAINERS.get(record.preset, 'one of `nnunet-mim trainers`')}")
    source = weights[IN_PROJECTIONS[0]].shape[1]
    target = network_state[IN_PROJECTIONS[0]].shape[1]
    if source != target:
        raise RuntimeError(f"{filename} was pre-trained with {source} input channel(s), this dataset has {target}. "
                           f"Adapt it first:\n    nnunet-mim adapt-checkpoint {filename} --input-channels {target} "
                           "-o adapted.pth\nand pass adapted.pth to -pretrained_weights")
    misfit = fit_problem([k for k in network_state if ".seg_layers." not in k], network_state, weights)
    if misfit:
        raise RuntimeError(f"{filename} does not fit this network: {misfit}")
    return list(weights), checkpoint.get("nnunet_mim", {})


def describe_normalisation(scheme: str, properties: dict) -> str:
    if scheme == "CTNormalization":
        return (f"CT: clip to [{properties['percentile_00_5']:g}, {properties['percentile_99_5']:g}], then "
                f"(x - {properties['mean']:g}) / {properties['std']:g}")
    return scheme


def normalisation_difference(pretraining: dict, schemes: Sequence[str], properties: Dict[str, dict]) -> Optional[str]:
    """A warning when fine-tuning normalises intensities differently from pre-training (for
    instance nnU-Net's CT statistics of a labelled dataset vs a collection's fixed window);
    None when they agree or the checkpoint does not say."""
    if "normalization_schemes" not in pretraining:
        return None
    before = [describe_normalisation(s, pretraining["foreground_intensity_properties_per_channel"].get(str(c), {}))
              for c, s in enumerate(pretraining["normalization_schemes"])]
    now = [describe_normalisation(s, properties.get(str(c), {})) for c, s in enumerate(schemes)]
    if before[:1] == now[:1]:
        return None
    return (f"intensities are normalised differently: pre-training saw {before[0]}; this plan gives {now[0]}. "
            "Fine-tuning adapts, but the pre-trained features start from other intensities")


def adapt_input_channels(checkpoint: dict, channels: int) -> Sequence[str]:
    """Rewrite the input projections of ``checkpoint`` (in place) for ``channels`` input channels, of whichever
    network it holds (``input_projections``); an nnssl file's plan then says the new count."""
    weights, projections = checkpoint["network_weights"], input_projections(checkpoint)
    if not projections:
        raise RuntimeError("its nnssl plan names no input projection (keys_to_in_proj): the channels cannot be "
                           "adapted; nothing was written")
    changed = []
    for key in in_projection_keys(weights, projections):
        w = weights[key]
        weights[key] = kernel_for_channels(w, channels)
        changed.append(f"{key}: {tuple(w.shape)} -> {tuple(weights[key].shape)}")
    if not changed:
        raise RuntimeError(f"no input projection ({', '.join(projections)}) in this checkpoint's weights; nothing "
                           "was written")
    if isinstance(checkpoint.get("nnssl_adaptation_plan"), dict):
        checkpoint["nnssl_adaptation_plan"]["pretrain_num_input_channels"] = channels
    checkpoint.setdefault("nnunet_mim", {})["input_channels_adapted"] = {"to": channels, "tensors": changed}
    return changed


def transplant_encoder(checkpoint: dict, source: dict) -> List[str]:
    """Replace (in place) the encoder of the pre-training ``checkpoint`` by the encoder of ``source``,
    the checkpoint of a segmentation run of the same network (nnUNetTrainerMiMScratch or
    nnUNetTrainerMiMFinetune, trained with labels), and record it as supervised pre-training with the
    plan and epochs of that run. The decoder and reconstruction head stay the checkpoint's. Returns
    the keys replaced."""
    weights, donor = checkpoint["network_weights"], source["network_weights"]
    record = pretraining_record_of("the checkpoint to transplant into", checkpoint)
    if record is None:
        raise RuntimeError("the checkpoint to transplant into is not an nnunet-mim pre-training checkpoint")
    if "method" in source.get("nnunet_mim", {}) or "init_args" not in source:  # what pre-training writes
        raise RuntimeError("the encoder's source is not the checkpoint of an nnU-Net segmentation run trained with "
                           "labels (nnUNetTrainerMiMScratch or nnUNetTrainerMiMFinetune)")
    keys = [k for k in weights if k.startswith(ENCODER_PREFIXES)]
    misfit = fit_problem(keys, weights, donor)
    if misfit:
        raise RuntimeError(f"the source's encoder does not fit the pre-training checkpoint's (another preset?): "
                           f"{misfit}")
    for key in keys:
        weights[key] = donor[key].clone()
    plans = source["init_args"]["plans"]
    configuration = plans["configurations"][source["init_args"]["configuration"]]
    supervised = replace(record, method="supervised", patch_size=tuple(configuration["patch_size"]),
                         spacing=tuple(configuration["spacing"]), epochs=source["current_epoch"])
    weights["pretraining_record"] = supervised.to_tensor()
    checkpoint.setdefault("nnunet_mim", {}).update(
        method="supervised", encoder_from=source.get("trainer_name"), patch_size=list(supervised.patch_size),
        spacing=list(supervised.spacing), normalization_schemes=configuration["normalization_schemes"],
        foreground_intensity_properties_per_channel=plans["foreground_intensity_properties_per_channel"])
    return keys
