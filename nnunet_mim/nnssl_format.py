"""nnssl's checkpoint format, written from a pre-training run of this project (``nnunet-mim export --format nnssl``):
what nnU-Net master's ``nnUNetv2_preprocess_like_nnssl`` / ``PretrainedTrainer`` and nnssl's own tooling read, as
``../shared/nnssl-interop.md`` sets it out field by field.

``checkpoint_final.pth`` holds ``network_weights`` (the pre-trained U-Net under dynamic-network-architectures'
names: encoder, stem and decoder; not the alignment heads or the pretraining record) and ``nnssl_adaptation_plan``;
CPU tensors and plain Python values only, so ``torch.load(weights_only=True)`` reads it with no allow-list.
``adaptation_plan.json`` and ``config.json`` sit beside it, as a Hugging Face repository of nnssl holds them.

Only networks that nnssl and nnU-Net master can rebuild are exported: the residual-encoder U-Net
(backbones/resenc.py) and Primus (backbones/primus.py: ``PrimusS/B/M/L`` by name, another size as master's
``PrimusX`` keywords). The hybrid network is not one of them, and its checkpoints are refused by name.
"""
import json
import os
from collections import OrderedDict
from typing import List

from nnunet_mim.backbones.resenc import RESENC_IN_PROJECTIONS
from nnunet_mim.checkpointing import save_checkpoint_file, save_json
from nnunet_mim.finetuning.checkpoint import trained_architecture
from nnunet_mim.pretrained_loading import PRETRAINING_HEADS

RESENC_NETWORK = "dynamic_network_architectures.architectures.unet.ResidualEncoderUNet"
ALIGNMENT_KWARGS = ("alignment_pairs", "alignment_predictor", "alignment_batch_norm", "projector_dim")
FILES = ("checkpoint_final.pth", "adaptation_plan.json", "config.json")


def plain(value):
    """``value`` as JSON holds it: lists, not tuples (master compares patch sizes with ``!=``), no numpy types."""
    return json.loads(json.dumps(value))


def pretraining_architecture(checkpoint: dict) -> dict:
    """The pre-trained network's entry of the plan that training saved; a ValueError when it cannot be exported."""
    architecture = trained_architecture(checkpoint)
    if not architecture:
        raise ValueError("it holds no plan (init_args): export the checkpoint_final.pth a pre-training run wrote")
    if not architecture["network_class_name"].endswith(("ResEncPretrainNetwork", "PrimusPretrainNetwork")):
        raise ValueError(f"its network ({architecture['network_class_name']}) is not one nnssl or nnU-Net master can "
                         "rebuild: only residual-encoder and Primus pre-training "
                         "(nnUNetTrainer{MiM,MAE}Pretrain_ResEnc, ..._Primus) export to nnssl's format")
    return architecture


def resenc_entries(kwargs: dict, weights: dict) -> dict:
    """The adaptation plan's architecture entries of a residual-encoder U-Net, built from its keywords."""
    requiring_import = [k for k in ("conv_op", "norm_op", "dropout_op", "nonlin") if kwargs.get(k) is not None]
    return {
        "architecture_plans": {"arch_class_name": RESENC_NETWORK, "arch_kwargs": kwargs,
                               "arch_kwargs_requiring_import": requiring_import},
        "pretrain_num_input_channels": int(weights["encoder.stem.convs.0.conv.weight"].shape[1]),
        "key_to_encoder": "encoder.stages", "key_to_stem": "encoder.stem",
        "keys_to_in_proj": list(RESENC_IN_PROJECTIONS),
        "key_to_lpe": None,  # read by master by index: the key must be there, null for a CNN
        "architecture_kwargs": {"n_stages": kwargs["n_stages"], "kernel_sizes": kwargs["kernel_sizes"]}}


def primus_entries(kwargs: dict, weights: dict, patch_size: list) -> dict:
    """The adaptation plan's architecture entries of a Primus: a preset by name (master builds ``PrimusS/B/M/L``
    itself), another size as the keywords master's ``PretrainedTrainer_Primusx`` builds ``Primus`` from."""
    from nnunet_mim.backbones.primus import PRIMUS_IN_PROJECTIONS, PRIMUS_SETTINGS, PRIMUS_SIZES, PRIMUS_TOKEN_SIZE
    size = {k: kwargs[k] for k in ("embed_dim", "eva_depth", "eva_numheads")}
    settings = {k: kwargs.get(k, v) for k, v in PRIMUS_SETTINGS.items()}
    presets = [name for name, preset in PRIMUS_SIZES.items() if preset == size and name != "T"]
    if presets and settings == PRIMUS_SETTINGS:
        architecture = {"arch_class_name": f"Primus{presets[0]}", "arch_kwargs": None,
                        "arch_kwargs_requiring_import": None}
    else:
        architecture = {"arch_class_name": "PrimusX", "arch_kwargs_requiring_import": None, "arch_kwargs": {
            "embed_dim": size["embed_dim"], "patch_embed_size": [PRIMUS_TOKEN_SIZE] * 3,
            "encoder_eva_depth": size["eva_depth"], "encoder_eva_numheads": size["eva_numheads"], **settings}}
    return {"architecture_plans": architecture,
            "pretrain_num_input_channels": int(weights["down_projection.proj.weight"].shape[1]),
            "key_to_encoder": "eva", "key_to_stem": "down_projection", "keys_to_in_proj": list(PRIMUS_IN_PROJECTIONS),
            "key_to_lpe": "eva.pos_embed",
            "pretrain_patch_size": patch_size}  # the position table's patch, every level's input


def adaptation_plan(checkpoint: dict) -> dict:
    """nnssl's ``AdaptationPlan``, serialised, for a residual-encoder or Primus pre-training checkpoint."""
    architecture = pretraining_architecture(checkpoint)
    plans, configuration = checkpoint["init_args"]["plans"], checkpoint["init_args"]["configuration"]
    config, extras = plans["configurations"][configuration], checkpoint["nnunet_mim"]
    kwargs = {k: v for k, v in architecture["arch_kwargs"].items() if k not in ALIGNMENT_KWARGS}
    weights = checkpoint["network_weights"]
    entries = (primus_entries(kwargs, weights, extras["patch_size"])
               if architecture["network_class_name"].endswith("PrimusPretrainNetwork") else
               resenc_entries(kwargs, weights))
    pretrain_configuration = {
        "data_identifier": config["data_identifier"], "preprocessor_name": config["preprocessor_name"],
        "spacing_style": "median",  # nnU-Net plans the median spacing of the dataset (or the collection's)
        "normalization_schemes": extras["normalization_schemes"], "use_mask_for_norm": config["use_mask_for_norm"],
        "resampling_fn_data": config["resampling_fn_data"],
        "resampling_fn_data_kwargs": config["resampling_fn_data_kwargs"],
        "resampling_fn_mask": config["resampling_fn_seg"],
        "resampling_fn_mask_kwargs": config["resampling_fn_seg_kwargs"],
        "spacing": extras["spacing"], "patch_size": extras["patch_size"]}
    return plain({
        **entries,
        "pretrain_plan": {
            "dataset_name": plans["dataset_name"], "plans_name": plans["plans_name"],
            "original_median_spacing_after_transp": plans["original_median_spacing_after_transp"],
            "image_reader_writer": plans["image_reader_writer"], "transpose_forward": plans["transpose_forward"],
            "transpose_backward": plans["transpose_backward"],
            "experiment_planner_used": plans.get("experiment_planner_used", ""),
            "configurations": {configuration: pretrain_configuration}},
        "recommended_downstream_patchsize": extras["patch_size"]})


def nnssl_checkpoint(checkpoint: dict) -> dict:
    """The nnssl checkpoint of a residual-encoder or Primus pre-training checkpoint: weights on the CPU, numpy-free,
    without this project's heads and token decoder (PRETRAINING_HEADS)."""
    plan = adaptation_plan(checkpoint)
    weights = OrderedDict((k, v.detach().cpu().clone()) for k, v in checkpoint["network_weights"].items()
                          if not k.startswith(PRETRAINING_HEADS))
    return {"network_weights": weights, "nnssl_adaptation_plan": plan, "trainer_name": str(checkpoint["trainer_name"]),
            "current_epoch": int(checkpoint["current_epoch"])}


def export_nnssl(checkpoint: dict, folder: str) -> List[str]:
    """Write ``FILES`` into ``folder`` (created once the checkpoint proved exportable); returns their paths."""
    exported = nnssl_checkpoint(checkpoint)
    os.makedirs(folder, exist_ok=True)
    config = {"format": "nnssl", "written_by": "nnunet-mim", "method": checkpoint["nnunet_mim"]["method"],
              "architecture": exported["nnssl_adaptation_plan"]["architecture_plans"]["arch_class_name"],
              "epochs": exported["current_epoch"]}
    paths = [os.path.join(folder, name) for name in FILES]
    save_checkpoint_file(exported, paths[0])
    save_json(exported["nnssl_adaptation_plan"], paths[1])
    save_json(config, paths[2])
    return paths
