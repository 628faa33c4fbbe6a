"""MiM and MAE on nnU-Net's residual-encoder U-Net (nnunet_mim/backbones/resenc.py): the masked forward hides what
it says, the plan stays the user's, the losses fall over a few steps of the real trainer, and nnU-Net's own
trainer on the same plans fine-tunes from the checkpoint through stock -pretrained_weights."""
import json
import os

import pytest
import torch

from helpers import nnunet_train_in_process, python_in_process, run
from nnunet_mim.demo import nnunet_command

RESENC_M = dict(n_stages=4, features_per_stage=[8, 16, 32, 64], conv_op=torch.nn.Conv3d, kernel_sizes=[[3, 3, 3]] * 4,
                strides=[[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]], n_blocks_per_stage=[1, 2, 2, 2],
                n_conv_per_stage_decoder=[1, 1, 1], conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=torch.nn.LeakyReLU,
                nonlin_kwargs={"inplace": True})


def test_the_stage_whose_features_are_pooled_is_the_deepest_within_a_token():
    from nnunet_mim.backbones.resenc import feature_stage
    assert feature_stage([[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 2, 2]]) == 3  # stride 8: pooled onto 16^3 tokens
    assert feature_stage([1, 2, 2, 2, 2, 2]) == 4  # ResEnc-L: stride 16 at stage 4, 32 below it
    anisotropic = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2], [2, 2, 2]]
    assert feature_stage(anisotropic) == 4  # z 8, y and x 16; at stage 5 y and x reach 32


def test_hidden_voxels_never_reach_the_resenc_outputs():
    """The hybrid's bright-cube test on the CNN: what lies under hidden tokens changes nothing the network puts out
    (zeroing the input is the whole of the masking: a missing multiply would leak through every receptive field)."""
    from nnunet_mim.backbones.resenc import ResEncPretrainNetwork
    torch.manual_seed(0)
    net = ResEncPretrainNetwork(1, 3, **RESENC_M).eval()
    x = torch.randn(2, 1, 32, 64, 32)
    hidden = torch.rand(2, 2, 4, 2) > 0.5
    hidden[:, 0, 0, 0] = False
    hidden_voxels = hidden.repeat_interleave(16, 1).repeat_interleave(16, 2).repeat_interleave(16, 3)[:, None]
    y = torch.where(hidden_voxels, torch.randn_like(x) * 10 + 50, x)  # a bright cube under every hidden token
    with torch.no_grad():
        (pa, fa), (pb, fb) = net(x, hidden), net(y, hidden)
    assert pa.shape == (2, 16, 16 ** 3) and fa.shape == (2, 16, 64)  # one row per token, the stage-3 width
    assert torch.allclose(pa, pb, atol=1e-5) and torch.allclose(fa, fb, atol=1e-5)
    with pytest.raises(RuntimeError, match="this is a pre-training network"):
        net(x)


def test_its_weights_are_the_fine_tuning_networks_but_the_heads():
    """Same keys and shapes as the plan's ResidualEncoderUNet, the segmentation heads excepted (one output per
    input channel here): what stock -pretrained_weights needs."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    from nnunet_mim.backbones.resenc import ResEncPretrainNetwork
    pretraining = ResEncPretrainNetwork(1, 3, **RESENC_M).state_dict()
    fine_tuning = ResidualEncoderUNet(1, num_classes=3, deep_supervision=True, **RESENC_M).state_dict()
    differing = {k for k, v in fine_tuning.items() if k not in pretraining or pretraining[k].shape != v.shape}
    assert differing and all(".seg_layers." in k for k in differing)
    assert {k.split(".")[0] for k in set(pretraining) - set(fine_tuning)} == {"alignment", "pretraining_record"}


@pytest.fixture(scope="module")
def resenc_plans(nnunet_env):
    """nnU-Net's ResEnc-M plans of the test dataset (they share nnUNetPlans' preprocessed data), made CPU-sized as a
    plan of the user's own: a quarter of the widths, one block per stage, batch 2."""
    from nnunet_mim.backbones.resenc import RESENC_CLASS
    folder = os.path.join(nnunet_env["nnUNet_preprocessed"], "Dataset991_E2E")
    tiny = os.path.join(folder, "nnUNetResEncUNetTinyPlans.json")
    if not os.path.isfile(tiny):
        planning = {k: v for k, v in nnunet_env.items() if k != "nnUNet_n_proc_DA"}  # 0 breaks nnU-Net's planning
        run([nnunet_command("nnUNetv2_plan_experiment"), "-d", "991", "-pl", "nnUNetPlannerResEncM"], planning)
        with open(os.path.join(folder, "nnUNetResEncUNetMPlans.json")) as f:
            plans = json.load(f)
        os.remove(os.path.join(folder, "nnUNetResEncUNetMPlans.json"))  # the shared folder keeps only what is used
        config = plans["configurations"]["3d_fullres"]
        assert config["architecture"]["network_class_name"] == RESENC_CLASS
        stages = config["architecture"]["arch_kwargs"]["n_stages"]
        config["architecture"]["arch_kwargs"].update(features_per_stage=[8 * 2 ** i for i in range(stages)],
                                                     n_blocks_per_stage=[1] * stages)
        config["batch_size"], plans["plans_name"] = 2, "nnUNetResEncUNetTinyPlans"
        with open(tiny, "w") as f:
            json.dump(plans, f)
    return "nnUNetResEncUNetTinyPlans"


STEPS = """
import json, os
from helpers import trainer_on_test_dataset
from nnunet_mim import variants
trainer = trainer_on_test_dataset(getattr(variants, NAME), plans=PLANS, started=True)
batch = next(trainer.dataloader_train)
first = [trainer.train_step(batch) for _ in range(STEPS)]
os.makedirs(trainer.output_folder, exist_ok=True)
trainer.save_checkpoint(trainer.output_folder + "/checkpoint_final.pth")
print(json.dumps({"losses": [float(s["loss"]) for s in first], "skipped": sum(s["skipped"] for s in first),
                  "network": type(trainer.pretrain_network).__name__, "patch": trainer.configuration_manager.patch_size,
                  "checkpoint": trainer.output_folder + "/checkpoint_final.pth"}))
"""


def pretrain(nnunet_env, plans: str, name: str, steps: int = 10) -> dict:
    script = f"NAME, PLANS, STEPS = {name!r}, {plans!r}, {steps}\n" + STEPS
    return json.loads(python_in_process(script, nnunet_env).stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def mim_resenc(nnunet_env, resenc_plans):
    """Ten steps of MiM on the ResEnc plans (one batch), and the checkpoint they leave."""
    return pretrain(nnunet_env, resenc_plans, "nnUNetTrainerMiMPretrain_ResEnc_CPUsmoke")


def lowers_its_loss_and_fine_tunes_through_stock_nnunet(out: dict, nnunet_env, plans: str, pretrained: str):
    assert out["network"] == "ResEncPretrainNetwork" and out["skipped"] == 0
    losses = out["losses"]
    assert sum(losses[-3:]) < 0.95 * sum(losses[:3]), losses  # the same batch (fresh masks each step), fitted
    # nnU-Net's own trainer (at a CPU length) on the same plans, from the checkpoint, by -pretrained_weights
    result = nnunet_train_in_process(["991", "3d_fullres", "all", "-tr", "nnUNetTrainerStockCNN_CPUsmoke", "-p",
                                      plans, "-device", "cpu", "-pretrained_weights", pretrained], nnunet_env)
    assert "pre-trained weights loaded from" in result.stdout
    assert "segmentation heads kept as initialised" in result.stdout
    return result


def test_mim_on_resenc_lowers_its_loss_and_fine_tunes_and_predicts_through_stock_nnunet(nnunet_env, resenc_plans,
                                                                                       mim_resenc, tmp_path):
    from nnunet_mim.pretraining_record import PretrainingRecord
    lowers_its_loss_and_fine_tunes_through_stock_nnunet(mim_resenc, nnunet_env, resenc_plans, mim_resenc["checkpoint"])
    run([nnunet_command("nnUNetv2_predict"), "-i", os.path.join(nnunet_env["nnUNet_raw"], "Dataset991_E2E", "imagesTs"),
         "-o", str(tmp_path), "-d", "991", "-c", "3d_fullres", "-f", "all", "-tr", "nnUNetTrainerStockCNN_CPUsmoke",
         "-p", resenc_plans, "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], nnunet_env)
    assert any(name.endswith(".nii.gz") for name in os.listdir(tmp_path))
    checkpoint = torch.load(mim_resenc["checkpoint"], weights_only=False)
    record = PretrainingRecord.from_tensor(checkpoint["network_weights"]["pretraining_record"])
    assert record.method == "MiM" and record.preset == checkpoint["nnunet_mim"]["encoder_preset"] == "ResEnc"


def test_a_micro_batch_asked_of_resenc_pretraining_is_refused(nnunet_env, resenc_plans):
    """The memory model knows the hybrid only: a micro-batch asked for is refused, not silently ignored."""
    script = f"PLANS = {resenc_plans!r}\n" + """
from helpers import trainer_on_test_dataset
from nnunet_mim import variants
trainer_on_test_dataset(variants.nnUNetTrainerMAEPretrain_ResEnc_CPUsmoke, plans=PLANS).initialize()
"""
    result = python_in_process(script, dict(nnunet_env, NNUNET_MIM_MICRO_BATCH="1"), check=False)
    assert result.returncode == 1 and "(NNUNET_MIM_MICRO_BATCH, micro_batch) is not supported for ResEnc" in \
        result.stderr, result.stderr[-2000:]


@pytest.mark.slow  # MAE's path is MiM's with one level
def test_mae_on_resenc_lowers_its_loss_and_fine_tunes_through_stock_nnunet(nnunet_env, resenc_plans):
    out = pretrain(nnunet_env, resenc_plans, "nnUNetTrainerMAEPretrain_ResEnc_CPUsmoke")
    lowers_its_loss_and_fine_tunes_through_stock_nnunet(out, nnunet_env, resenc_plans, out["checkpoint"])


def walk(value, path="checkpoint"):
    """(path, value) of everything in a nested checkpoint."""
    yield path, value
    if isinstance(value, dict):
        for key, item in value.items():
            yield from walk(item, f"{path}[{key!r}]")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from walk(item, f"{path}[{i}]")


def test_export_writes_what_nnssl_and_nnunet_master_read(nnunet_env, mim_resenc, tmp_path):
    """nnssl's format as the interop notes list it: every field, plain types (lists, no tuples, no numpy), CPU
    tensors, loadable with weights_only=True and no allow-list; the encoder rebuilt from the plan alone (as master
    does) takes every encoder and stem tensor strictly, equal to the pre-trained ones."""
    import importlib

    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    from nnunet_mim.cli import main
    assert main(["export", mim_resenc["checkpoint"], "--format", "nnssl", "-o", str(tmp_path / "repo")]) == 0
    assert sorted(os.listdir(tmp_path / "repo")) == ["adaptation_plan.json", "checkpoint_final.pth", "config.json"]
    exported = torch.load(tmp_path / "repo" / "checkpoint_final.pth", weights_only=True)
    plan = exported["nnssl_adaptation_plan"]
    with open(tmp_path / "repo" / "adaptation_plan.json") as f:
        assert json.load(f) == plan
    assert {"architecture_plans", "pretrain_plan", "pretrain_num_input_channels", "recommended_downstream_patchsize",
            "key_to_encoder", "key_to_stem", "keys_to_in_proj", "key_to_lpe", "architecture_kwargs"} <= set(plan)
    assert "key_to_lpe" in plan and plan["key_to_lpe"] is None and plan["pretrain_num_input_channels"] == 1
    (configuration,) = plan["pretrain_plan"]["configurations"].values()  # exactly one
    assert configuration["patch_size"] == plan["recommended_downstream_patchsize"] == mim_resenc["patch"]
    assert configuration["spacing"] == [5.0, 5.0, 5.0] and configuration["normalization_schemes"] == [
        "ZScoreNormalization"]
    for path, value in walk(exported):
        assert not isinstance(value, tuple) and type(value).__module__ != "numpy", path
        assert not isinstance(value, torch.Tensor) or value.device.type == "cpu", path
    assert not any(k.startswith(("alignment.", "pretraining_record")) for k in exported["network_weights"])

    architecture = plan["architecture_plans"]
    kwargs = dict(architecture["arch_kwargs"])
    for key in architecture["arch_kwargs_requiring_import"]:
        module, _, name = kwargs[key].rpartition(".")
        kwargs[key] = getattr(importlib.import_module(module), name)
    rebuilt = ResidualEncoderUNet(plan["pretrain_num_input_channels"], num_classes=2, **kwargs)
    original = torch.load(mim_resenc["checkpoint"], weights_only=False)["network_weights"]
    for key in (plan["key_to_encoder"], plan["key_to_stem"]):
        part = {k[len(key) + 1:]: v for k, v in exported["network_weights"].items() if k.startswith(key + ".")}
        rebuilt.get_submodule(key).load_state_dict(part, strict=True)  # master's load: strict
        assert all(torch.equal(v, original[f"{key}.{k}"]) for k, v in part.items())
    before = (tmp_path / "repo" / "checkpoint_final.pth").read_bytes()
    assert main(["export", mim_resenc["checkpoint"], "--format", "nnssl", "-o", str(tmp_path / "repo")]) == 1
    assert (tmp_path / "repo" / "checkpoint_final.pth").read_bytes() == before  # nothing overwritten


def hand_written_nnssl_checkpoint(nnunet_env, plans: str, path) -> dict:
    """An nnssl ResEnc checkpoint as nnssl's MAE writes one (the full U-Net with one reconstruction channel), written
    here by hand from the format, not by this project's writer; returns its weights."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
    with open(os.path.join(nnunet_env["nnUNet_preprocessed"], "Dataset991_E2E", plans + ".json")) as f:
        architecture = json.load(f)["configurations"]["3d_fullres"]["architecture"]["arch_kwargs"]
    kwargs = dict(architecture, conv_op=torch.nn.Conv3d, norm_op=torch.nn.InstanceNorm3d, nonlin=torch.nn.LeakyReLU)
    torch.manual_seed(1)
    weights = ResidualEncoderUNet(1, num_classes=1, **kwargs).state_dict()
    torch.save({"network_weights": weights,
                "nnssl_adaptation_plan": {"architecture_plans": {"arch_class_name": "ResidualEncoderUNet"},
                                          "key_to_encoder": "encoder.stages", "key_to_stem": "encoder.stem",
                                          "key_to_lpe": None, "pretrain_num_input_channels": 1}}, path)
    return {"weights": weights, "kwargs": kwargs}


def test_a_hand_written_nnssl_checkpoint_fine_tunes_through_stock_nnunet(nnunet_env, resenc_plans, tmp_path):
    """-pretrained_weights of nnU-Net's trainer on a plan of the same network loads every tensor of an nnssl file but
    the segmentation heads, each equal to the file's."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    from nnunet_mim.pretrained_loading import load_pretrained_weights
    given = hand_written_nnssl_checkpoint(nnunet_env, resenc_plans, tmp_path / "nnssl.pth")
    torch.manual_seed(2)
    target = ResidualEncoderUNet(1, num_classes=3, deep_supervision=True, **given["kwargs"])
    load_pretrained_weights(target, str(tmp_path / "nnssl.pth"))
    loaded = target.state_dict()
    assert all(torch.equal(loaded[k], given["weights"][k]) for k in loaded if ".seg_layers." not in k)
    assert loaded["decoder.seg_layers.0.weight"].shape[0] == 3


def test_mim_pretraining_continues_from_an_nnssl_checkpoint(nnunet_env, resenc_plans, tmp_path, capsys):
    """"Continue from OpenMind": MiM pre-training of the same network starts from an nnssl checkpoint given by
    -pretrained_weights, its alignment heads fresh (the file has none), and runs."""
    given = hand_written_nnssl_checkpoint(nnunet_env, resenc_plans, tmp_path / "nnssl.pth")
    env = dict(nnunet_env, nnUNet_results=str(tmp_path / "results"))
    result = nnunet_train_in_process(["991", "3d_fullres", "all", "-tr", "nnUNetTrainerMiMPretrain_ResEnc_CPUsmoke",
                                      "-p", resenc_plans, "-device", "cpu", "-pretrained_weights",
                                      str(tmp_path / "nnssl.pth")], env)
    assert "tensors of the pre-training heads start fresh: the file has none" in result.stdout
    final = os.path.join(env["nnUNet_results"], "Dataset991_E2E",
                         f"nnUNetTrainerMiMPretrain_ResEnc_CPUsmoke__{resenc_plans}__3d_fullres", "fold_all",
                         "checkpoint_final.pth")
    trained = torch.load(final, weights_only=False)["network_weights"]
    stem = "encoder.stem.convs.0.conv.weight"
    assert trained[stem].shape == given["weights"][stem].shape and not torch.equal(trained[stem],
                                                                                   given["weights"][stem])


def test_a_plan_without_a_residual_encoder_is_refused_by_name(nnunet_env):
    from nnunet_mim.backbones.resenc import ResEncBackbone
    with open(os.path.join(nnunet_env["nnUNet_preprocessed"], "Dataset991_E2E", "nnUNetPlans.json")) as f:
        plans = json.load(f)

    class Probe(ResEncBackbone):
        from nnunet_mim.masking import LevelConfig
        levels = LevelConfig()

        @classmethod
        def alignment_kwargs(cls):
            return {}
    with pytest.raises(RuntimeError, match="PlainConvUNet: plan one .*-pl nnUNetPlannerResEncM"):
        Probe.pretraining_plans(plans, "3d_fullres")


def test_an_nnssl_checkpoint_is_widened_to_the_datasets_channels_as_nnunet_master_widens_it(nnunet_env, resenc_plans,
                                                                                           tmp_path, capsys):
    """One pre-training channel, two in the dataset: every alias of the stem's input convolution becomes the kernel
    repeated and divided by 2 (master's rule), said in the load line; more channels in the file than in the dataset
    are refused; a file of another architecture is named as such."""
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    from nnunet_mim.pretrained_loading import load_pretrained_weights
    given = hand_written_nnssl_checkpoint(nnunet_env, resenc_plans, tmp_path / "nnssl.pth")
    two_channels = ResidualEncoderUNet(2, num_classes=3, **given["kwargs"])
    load_pretrained_weights(two_channels, str(tmp_path / "nnssl.pth"))
    stem = "encoder.stem.convs.0.conv.weight"
    expected = given["weights"][stem].repeat(1, 2, 1, 1, 1) / 2
    loaded = two_channels.state_dict()
    assert torch.allclose(loaded[stem], expected) and torch.allclose(loaded["decoder." + stem], expected)
    assert all(torch.equal(loaded[k], v) for k, v in given["weights"].items()
               if ".seg_layers." not in k and "stem.convs.0" not in k)
    assert "input projections widened to 2 channels" in capsys.readouterr().out
    torch.save({"network_weights": two_channels.state_dict()}, tmp_path / "two.pth")
    with pytest.raises(RuntimeError, match="pre-trained with 2 input channels and this dataset has 1"):
        load_pretrained_weights(ResidualEncoderUNet(1, num_classes=3, **given["kwargs"]), str(tmp_path / "two.pth"))
    primus = {"network_weights": {"eva.pos_embed": torch.zeros(1, 8, 4)},
              "nnssl_adaptation_plan": {"architecture_plans": {"arch_class_name": "PrimusM"}, "key_to_lpe": None}}
    torch.save(primus, tmp_path / "primus.pth")
    with pytest.raises(RuntimeError, match=r"an nnssl checkpoint of PrimusM, this run builds ResidualEncoderUNet.*"
                                           r"PrimusM with -tr nnUNetTrainerPrimusFinetune"):
        load_pretrained_weights(two_channels, str(tmp_path / "primus.pth"))


def test_every_method_has_a_trainer_on_every_backbone():
    """The registries decide the trainers: a method (nnunet_mim/methods.py) on a backbone (nnunet_mim/backbones/)
    is ``<the method's trainer>_<backbone>`` (on the hybrid, the method's trainer itself), the backbone's network
    with the method's levels and losses; every backbone defines the whole interface itself (a ResEnc trainer that
    inherited the hybrid's memory model would plan its micro-batch for another network)."""
    from nnunet_mim import variants
    from nnunet_mim.backbones import BACKBONES, DEFAULT, INTERFACE
    from nnunet_mim.methods import METHODS, trainer_class
    for name, backbone in BACKBONES.items():
        assert all(attribute in vars(backbone) for attribute in INTERFACE), name
        for method in METHODS.values():
            trainer = getattr(variants, method.trainer if name == DEFAULT else f"{method.trainer}_{name}")
            assert next(c for c in trainer.__mro__ if c in BACKBONES.values()) is backbone
            assert issubclass(trainer, backbone) and issubclass(trainer, trainer_class(method))
            assert trainer.pretraining_plans.__func__ is backbone.pretraining_plans.__func__
            assert trainer.levels == backbone.backbone_levels(trainer_class(method).levels)
            assert trainer.__name__ in variants.trainer_list()
