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


@pytest.mark.parametrize("name", ["nnUNetTrainerMiMPretrain_ResEnc_CPUsmoke",  # MAE's path is MiM's with one level
                                  pytest.param("nnUNetTrainerMAEPretrain_ResEnc_CPUsmoke", marks=pytest.mark.slow)])
def test_resenc_pretraining_lowers_its_loss_and_fine_tunes_through_stock_nnunet(nnunet_env, resenc_plans, name):
    script = f"NAME, PLANS, STEPS = {name!r}, {resenc_plans!r}, 10\n" + STEPS
    out = json.loads(python_in_process(script, nnunet_env).stdout.strip().splitlines()[-1])
    assert out["network"] == "ResEncPretrainNetwork" and out["skipped"] == 0
    losses = out["losses"]
    assert sum(losses[-3:]) < 0.95 * sum(losses[:3]), losses  # the same batch (fresh masks each step), fitted
    # nnU-Net's own trainer (at a CPU length) on the same plans, from the checkpoint, by -pretrained_weights
    result = nnunet_train_in_process(["991", "3d_fullres", "all", "-tr", "nnUNetTrainerStockCNN_CPUsmoke", "-p",
                                      resenc_plans, "-device", "cpu", "-pretrained_weights", out["checkpoint"]],
                                     nnunet_env)
    assert "pre-trained weights loaded from" in result.stdout and "segmentation heads kept" in result.stdout


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
