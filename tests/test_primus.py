"""MiM and MAE on Primus (nnunet_mim/backbones/primus.py) and its fine-tuning trainer (finetuning/primus.py): the mask
hides exactly its tokens and nothing under them reaches a visible token, the pre-training network is the fine-tuning
network plus heads, the position table is resized by nnU-Net master's rule, a few steps of the real trainers lower
the losses, and the checkpoint fine-tunes and predicts through stock nnUNetv2_train and nnUNetv2_predict."""
import os

import pytest
import torch

from helpers import nnunet_train_in_process, python_in_process, run
from nnunet_mim.demo import nnunet_command
from test_backbones import pretrain

TINY = dict(embed_dim=96, eva_depth=2, eva_numheads=2)


def tiny_primus(patch=(32, 32, 32), **alignment):
    from nnunet_mim.backbones.primus import PrimusPretrainNetwork
    torch.manual_seed(0)
    return PrimusPretrainNetwork(1, 3, **TINY, input_shape=patch, **alignment)


def test_a_primus_mask_hides_exactly_its_tokens_and_nothing_under_them_leaks():
    """The hybrid's bright-cube test on Primus, with samples hiding different numbers of tokens (padding): a bright
    cube under every hidden token changes no output; a change under one visible token changes the outputs."""
    net = tiny_primus((32, 48, 32)).eval()
    x = torch.randn(2, 1, 32, 48, 32)
    hidden = torch.rand(2, 4, 6, 4) > 0.5
    hidden[0, 0, 0, 0], hidden[1] = False, torch.rand(4, 6, 4) > 0.3  # another count of visible tokens
    hidden[1, 1, 1, 1] = False
    voxels = hidden.repeat_interleave(8, 1).repeat_interleave(8, 2).repeat_interleave(8, 3)[:, None]
    bright = torch.where(voxels, torch.randn_like(x) * 10 + 50, x)
    with torch.no_grad():
        (pa, fa), (pb, fb) = net(x, hidden), net(bright, hidden)
        assert pa.shape == (2, 96, 8 ** 3) and fa.shape == (2, 96, 96)  # one row per 8^3 token
        assert torch.allclose(pa, pb, atol=1e-5) and torch.allclose(fa, fb, atol=1e-5)
        seen = x.clone()
        seen[1, :, 8:16, 8:16, 8:16] += 50  # under the visible token (1, 1, 1)
        assert not torch.allclose(net(seen, hidden)[0][1], pa[1], atol=1e-3)
        encoded = net.encode_visible(x, ~hidden)
    for sample in range(2):  # the encoder kept exactly the visible tokens, in raster order
        kept = encoded.keep_indices[sample][encoded.valid[sample]]
        assert torch.equal(kept, (~hidden[sample]).flatten().nonzero().flatten())
    with pytest.raises(RuntimeError, match="this is a pre-training network"):
        net(x)


def test_its_weights_are_the_fine_tuning_networks_and_heads():
    """Every key and shape of nnU-Net 2.8.1's Primus of the same size and patch (its decoder, up_projection, never
    trains: fine-tuning keeps its own), the reconstruction decoder, the heads and the record besides."""
    from nnunet_mim.backbones.primus import primus_network
    network = tiny_primus(alignment_pairs=2)
    pretraining = network.state_dict()
    fine_tuning = primus_network(1, 3, "T", (32, 32, 32)).state_dict()
    assert all(k in pretraining and pretraining[k].shape == v.shape for k, v in fine_tuning.items())
    assert not any(p.requires_grad for p in network.up_projection.parameters())
    from nnunet_mim.schedule import adamw_param_groups
    decayed, kept = adamw_param_groups(network, 0.05)
    assert any(p is network.eva.pos_embed for p in kept["params"])  # a position table is not decayed (MAE, Primus)
    assert any(p is network.down_projection.proj.weight for p in decayed["params"])
    assert {k.split(".")[0] for k in set(pretraining) - set(fine_tuning)} == {
        "reconstruction", "alignment", "pretraining_record"}


def test_the_position_table_is_resized_as_nnunet_master_resizes_it():
    """Trilinear, corners not aligned, raster order with the first axis slowest (master's
    interpolate_patch_embed_3d, written here with einops as master writes it), and a table learnt on the target's grid
    comes back unchanged."""
    from einops import rearrange

    from nnunet_mim.pretrained_loading import resize_position_table, token_grid_of
    table = torch.randn(1, 4 * 6 * 2, 5)
    ours = resize_position_table(table, [4, 6, 2], [5, 3, 4])
    grid = rearrange(table.permute(0, 2, 1), "B C (x y z) -> B C x y z", x=4, y=6, z=2)
    resized = torch.nn.functional.interpolate(grid, size=[5, 3, 4], mode="trilinear", align_corners=False)
    master = rearrange(resized, "B C x y z -> B C (x y z)").permute(0, 2, 1)
    assert ours.shape == (1, 60, 5) and torch.allclose(ours, master, atol=1e-6)
    assert torch.allclose(resize_position_table(table, [4, 6, 2], [4, 6, 2]), table, atol=1e-6)
    # the grid the table was learnt on: the file's pre-training patch, else a cube
    nnssl = {"nnssl_adaptation_plan": {"pretrain_plan": {"configurations": {"c": {"patch_size": [32, 48, 16]}}}}}
    assert token_grid_of(nnssl, 48, 8) == [4, 6, 2]
    assert token_grid_of({"nnunet_mim": {"patch_size": [64, 64, 64]}}, 27, 8) == [3, 3, 3]  # 64^3 gives 512
    assert token_grid_of({}, 48, 8) is None


@pytest.fixture(scope="module")
def mim_primus(nnunet_env):
    """Ten steps of MiM on tiny Primus (one batch of the test dataset's plan), and the checkpoint they leave."""
    return pretrain(nnunet_env, "nnUNetPlans", "nnUNetTrainerMiMPretrain_Primus_CPUsmoke")


def test_mim_on_primus_lowers_its_loss_then_fine_tunes_and_predicts_through_stock_nnunet(nnunet_env, mim_primus,
                                                                                       tmp_path):
    from nnunet_mim.pretraining_record import PretrainingRecord
    assert mim_primus["network"] == "PrimusPretrainNetwork" and mim_primus["skipped"] == 0
    losses = mim_primus["losses"]
    assert sum(losses[-3:]) < 0.95 * sum(losses[:3]), losses  # the same batch (fresh masks each step), fitted
    checkpoint = torch.load(mim_primus["checkpoint"], weights_only=False)
    record = PretrainingRecord.from_tensor(checkpoint["network_weights"]["pretraining_record"])
    assert record.method == "MiM" and record.preset == checkpoint["nnunet_mim"]["encoder_preset"] == "Primus"
    assert checkpoint["nnunet_mim"]["token_size"] == 8 and checkpoint["nnunet_mim"]["levels"]["l3_region_tokens"] == 2

    result = nnunet_train_in_process(["991", "3d_fullres", "all", "-tr", "nnUNetTrainerPrimusFinetune_T_CPUsmoke",
                                      "-device", "cpu", "-pretrained_weights", mim_primus["checkpoint"]], nnunet_env)
    assert "segmentation heads and Primus's decoder kept as initialised" in result.stdout, result.stdout[-3000:]
    # pre-trained at the plan's 40x48x40 rounded to MiM's multiple of 16, fine-tuned at it rounded to whole tokens
    assert "position table eva.pos_embed resized from [4, 6, 4] to [5, 6, 5] tokens" in result.stdout
    run_folder = os.path.join(nnunet_env["nnUNet_results"], "Dataset991_E2E",
                              "nnUNetTrainerPrimusFinetune_T_CPUsmoke__nnUNetPlans__3d_fullres", "fold_all")
    fine_tuned = torch.load(os.path.join(run_folder, "checkpoint_final.pth"), weights_only=False)
    # the encoder trained on from the pre-trained weights: after two steps its tensors lie far closer to them than to
    # a fresh initialisation
    from nnunet_mim.backbones.primus import primus_network
    fresh = primus_network(1, 3, "T", (32, 32, 32)).state_dict()
    for key in ("down_projection.proj.weight", "eva.blocks.1.attn.q_proj.weight"):
        tuned, start = fine_tuned["network_weights"][key], checkpoint["network_weights"][key]
        assert (tuned - start).norm() < 0.2 * (tuned - fresh[key]).norm(), key
    run([nnunet_command("nnUNetv2_predict"), "-i", os.path.join(nnunet_env["nnUNet_raw"], "Dataset991_E2E", "imagesTs"),
         "-o", str(tmp_path), "-d", "991", "-c", "3d_fullres", "-f", "all", "-tr",
         "nnUNetTrainerPrimusFinetune_T_CPUsmoke", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"],
        nnunet_env)
    assert any(name.endswith(".nii.gz") for name in os.listdir(tmp_path))


@pytest.mark.slow  # MAE's path is MiM's with one level
def test_mae_on_primus_lowers_its_loss(nnunet_env):
    out = pretrain(nnunet_env, "nnUNetPlans", "nnUNetTrainerMAEPretrain_Primus_CPUsmoke")
    assert out["network"] == "PrimusPretrainNetwork" and out["skipped"] == 0
    assert sum(out["losses"][-3:]) < 0.95 * sum(out["losses"][:3]), out["losses"]


def test_export_writes_a_primus_that_nnunet_master_rebuilds(mim_primus, tmp_path):
    """A Primus of no preset size exports as master's PrimusX keywords; Primus rebuilt from them (as master's
    PretrainedTrainer_Primusx does, at the recommended patch) takes the file's encoder and stem strictly, equal to the
    pre-trained tensors; the position table's patch is written; weights_only reads it."""
    from dynamic_network_architectures.architectures.primus import Primus

    from nnunet_mim.cli import main
    assert main(["export", mim_primus["checkpoint"], "--format", "nnssl", "-o", str(tmp_path / "repo")]) == 0
    exported = torch.load(tmp_path / "repo" / "checkpoint_final.pth", weights_only=True)
    plan = exported["nnssl_adaptation_plan"]
    assert plan["architecture_plans"] == {"arch_class_name": "PrimusX", "arch_kwargs_requiring_import": None,
                                          "arch_kwargs": {"embed_dim": 96, "patch_embed_size": [8, 8, 8],
                                                          "encoder_eva_depth": 2, "encoder_eva_numheads": 2,
                                                          "init_values": 0.1, "scale_attn_inner": True}}
    assert (plan["key_to_encoder"], plan["key_to_stem"], plan["keys_to_in_proj"], plan["key_to_lpe"]) == (
        "eva", "down_projection", ["down_projection.proj"], "eva.pos_embed")
    assert plan["pretrain_patch_size"] == plan["recommended_downstream_patchsize"] == mim_primus["patch"]
    assert mim_primus["patch"] == [32, 48, 32]
    assert not any(k.startswith(("alignment.", "reconstruction.", "pretraining_record"))
                   for k in exported["network_weights"])
    kwargs = plan["architecture_plans"]["arch_kwargs"]
    rebuilt = Primus(1, kwargs["embed_dim"], kwargs["patch_embed_size"], 3, kwargs["encoder_eva_depth"],
                     kwargs["encoder_eva_numheads"], plan["recommended_downstream_patchsize"], drop_path_rate=0.2,
                     scale_attn_inner=kwargs["scale_attn_inner"], init_values=kwargs["init_values"])
    original = torch.load(mim_primus["checkpoint"], weights_only=False)["network_weights"]
    for key in (plan["key_to_encoder"], plan["key_to_stem"]):
        part = {k[len(key) + 1:]: v for k, v in exported["network_weights"].items() if k.startswith(key + ".")}
        rebuilt.get_submodule(key).load_state_dict(part, strict=True)  # master's load: strict
        assert part and all(torch.equal(v, original[f"{key}.{k}"]) for k, v in part.items())
    # and back: the exported file fine-tunes with every encoder and stem tensor the pre-trained one
    from nnunet_mim.backbones.primus import primus_network
    from nnunet_mim.pretrained_loading import load_pretrained_weights
    network = primus_network(1, 3, "T", mim_primus["patch"])
    load_pretrained_weights(network, str(tmp_path / "repo" / "checkpoint_final.pth"))
    assert all(torch.equal(v, original[k]) for k, v in network.state_dict().items()
               if k.startswith(("eva.", "down_projection.")))


def hand_written_nnssl_primus(path, patch=(32, 32, 32)) -> dict:
    """An nnssl Primus checkpoint as nnssl's EvaMAE writes one (Primus's keys, a one-channel up_projection, its own Eva
    decoder and a mask token parameter), written here by hand from the format, not by this project's writer."""
    from dynamic_network_architectures.architectures.primus import Primus
    torch.manual_seed(3)
    weights = Primus(1, 96, (8, 8, 8), 1, 2, 2, patch, init_values=0.1, scale_attn_inner=True).state_dict()
    weights["decoder.blocks.0.attn.qkv.weight"] = torch.randn(288, 96)
    weights["mask_token"] = torch.randn(1, 1, 96)
    torch.save({"network_weights": weights, "nnssl_adaptation_plan": {
        "architecture_plans": {"arch_class_name": "PrimusX", "arch_kwargs": {
            "embed_dim": 96, "patch_embed_size": [8, 8, 8], "encoder_eva_depth": 2, "encoder_eva_numheads": 2,
            "scale_attn_inner": True, "init_values": 0.1}, "arch_kwargs_requiring_import": None},
        "pretrain_plan": {"configurations": {"onemmiso": {"spacing": [1.0, 1.0, 1.0], "patch_size": list(patch)}}},
        "pretrain_num_input_channels": 1, "recommended_downstream_patchsize": list(patch), "key_to_encoder": "eva",
        "key_to_stem": "down_projection", "keys_to_in_proj": ["down_projection.proj"], "key_to_lpe": "eva.pos_embed"}},
        path)
    return weights


def test_a_hand_written_nnssl_primus_loads_widened_and_resized_by_masters_rules(tmp_path, capsys):
    """Into a two-channel Primus at another patch: every encoder tensor equal to the file's, the input projection
    repeated and divided by 2, the position table resized trilinearly from 4^3 to 5x6x5 tokens, the decoder kept; the
    load line says each. Into MiM's pre-training network ("continue from OpenMind"): the token decoder and the heads
    start fresh."""
    from nnunet_mim.backbones.primus import primus_network
    from nnunet_mim.pretrained_loading import load_pretrained_weights, resize_position_table
    given = hand_written_nnssl_primus(tmp_path / "nnssl.pth")
    network = primus_network(2, 3, "T", (40, 48, 40))
    decoder_before = network.up_projection.decode[2].weight.clone()
    load_pretrained_weights(network, str(tmp_path / "nnssl.pth"))
    loaded = network.state_dict()
    assert torch.allclose(loaded["down_projection.proj.weight"],
                          given["down_projection.proj.weight"].repeat(1, 2, 1, 1, 1) / 2)
    assert torch.equal(loaded["eva.pos_embed"], resize_position_table(given["eva.pos_embed"], [4, 4, 4], [5, 6, 5]))
    assert all(torch.equal(v, given[k]) for k, v in loaded.items()
               if k.startswith("eva.") and k != "eva.pos_embed")
    assert torch.equal(loaded["mask_token"], given["mask_token"])
    assert torch.equal(network.up_projection.decode[2].weight, decoder_before)
    out = capsys.readouterr().out
    assert "widened to 2 channels" in out and "resized from [4, 4, 4] to [5, 6, 5] tokens" in out
    assert "1 tensors of the file not in this network, skipped (e.g. decoder.blocks.0.attn.qkv.weight)" in out

    load_pretrained_weights(tiny_primus(alignment_pairs=2), str(tmp_path / "nnssl.pth"))
    assert "tensors of the pre-training heads start fresh: the file has none" in capsys.readouterr().out


def test_a_spacing_or_normalisation_other_than_the_pretrainings_is_warned_with_the_commands(tmp_path):
    """OpenMind-like file (1 mm, z-score) against a 5 mm CT plan: both said, each with what plans like the file; the
    same plan as the file's, or a file that does not say, gives nothing."""
    from nnunet_mim.finetuning.plan_match import plan_mismatch
    hand_written_nnssl_primus(tmp_path / "nnssl.pth")
    checkpoint = torch.load(tmp_path / "nnssl.pth", weights_only=True)
    checkpoint["nnssl_adaptation_plan"]["pretrain_plan"]["configurations"]["onemmiso"]["normalization_schemes"] = [
        "ZScoreNormalization"]
    plans = {"dataset_name": "Dataset004_Hippocampus", "plans_name": "nnUNetResEncUNetMPlans",
             "experiment_planner_used": "nnUNetPlannerResEncM"}
    spacing, normalisation = plan_mismatch(checkpoint, [5.0, 5.0, 5.0], ["CTNormalization"], "3d_fullres", plans)
    assert ("learnt at spacing [1.0, 1.0, 1.0] mm and this plan resamples to [5.0, 5.0, 5.0] mm" in spacing and
            "nnUNetv2_plan_experiment -d 004 -pl nnUNetPlannerResEncM -overwrite_target_spacing 1.0 1.0 1.0 "
            "-overwrite_plans_name nnUNetResEncUNetMPlans_like_pretraining && nnUNetv2_preprocess -d 004 -plans_name "
            "nnUNetResEncUNetMPlans_like_pretraining -c 3d_fullres, then train with -p "
            "nnUNetResEncUNetMPlans_like_pretraining" in spacing)
    assert "normalised by ZScoreNormalization and this plan uses CTNormalization" in normalisation
    assert plan_mismatch(checkpoint, [1.05, 1.0, 0.95], ["ZScoreNormalization"], "3d_fullres", plans) == []
    assert plan_mismatch({"network_weights": {}}, [5.0] * 3, ["CTNormalization"], "3d_fullres", plans) == []


def test_the_primus_fine_tuning_trainer_says_the_mismatch_in_its_log(nnunet_env, tmp_path):
    """Initialised with -pretrained_weights on the command line (as nnUNetv2_train runs it), the trainer writes the
    warning into its log before the weights are loaded."""
    hand_written_nnssl_primus(tmp_path / "nnssl.pth")  # 1 mm; the test dataset is 5 mm
    script = f"PATH = {str(tmp_path / 'nnssl.pth')!r}\n" + """
import sys
from helpers import trainer_on_test_dataset
from nnunet_mim import variants
sys.argv += ["-pretrained_weights", PATH]
trainer = trainer_on_test_dataset(variants.nnUNetTrainerPrimusFinetune_T_CPUsmoke)
trainer.initialize()
print(open(trainer.log_file).read())
"""
    log = python_in_process(script, nnunet_env).stdout
    assert "WARNING: the pre-trained weights were learnt at spacing [1.0, 1.0, 1.0] mm" in log


def test_adapt_checkpoint_widens_an_nnssl_file_and_a_primus_pretraining(mim_primus, tmp_path):
    """`nnunet-mim adapt-checkpoint --input-channels 2` on nnssl's file: the input projection by the widening rule,
    the plan saying 2 channels, every other tensor as given, and the result loads into a two-channel Primus with
    nothing left to widen; on this project's Primus pre-training, its own input projection; --encoder-from on an
    nnssl file is refused by name."""
    from nnunet_mim.backbones.primus import primus_network
    from nnunet_mim.cli import main
    from nnunet_mim.pretrained_loading import kernel_for_channels, load_pretrained_weights
    given = hand_written_nnssl_primus(tmp_path / "nnssl.pth")
    assert main(["adapt-checkpoint", str(tmp_path / "nnssl.pth"), "--input-channels", "2", "-o",
                 str(tmp_path / "two.pth")]) == 0
    adapted = torch.load(tmp_path / "two.pth", weights_only=True)
    assert adapted["nnssl_adaptation_plan"]["pretrain_num_input_channels"] == 2
    weights = adapted["network_weights"]
    assert torch.equal(weights["down_projection.proj.weight"],
                       kernel_for_channels(given["down_projection.proj.weight"], 2))
    assert all(torch.equal(weights[k], v) for k, v in given.items() if k != "down_projection.proj.weight")
    load_pretrained_weights(primus_network(2, 3, "T", (32, 32, 32)), str(tmp_path / "two.pth"))

    assert main(["adapt-checkpoint", mim_primus["checkpoint"], "--input-channels", "3", "-o",
                 str(tmp_path / "ours.pth")]) == 0
    assert torch.load(tmp_path / "ours.pth", weights_only=False)["network_weights"][
        "down_projection.proj.weight"].shape[1] == 3
    assert main(["adapt-checkpoint", str(tmp_path / "nnssl.pth"), "--encoder-from", mim_primus["checkpoint"], "-o",
                 str(tmp_path / "no.pth")]) == 1 and not os.path.exists(tmp_path / "no.pth")


def test_mim_pretraining_on_primus_continues_from_an_nnssl_file_through_nnunetv2_train(nnunet_env, tmp_path):
    """"Continue from OpenMind" on Primus, through the whole of nnUNetv2_train: the nnssl file's encoder loaded (its
    position table resized to the plan's patch), the token decoder and heads fresh, two epochs trained, checkpoints
    and the reconstruction picture written."""
    hand_written_nnssl_primus(tmp_path / "nnssl.pth")
    env = dict(nnunet_env, nnUNet_results=str(tmp_path / "results"))
    result = nnunet_train_in_process(["991", "3d_fullres", "all", "-tr", "nnUNetTrainerMiMPretrain_Primus_CPUsmoke",
                                      "-device", "cpu", "-pretrained_weights", str(tmp_path / "nnssl.pth")], env)
    assert "tensors of the pre-training heads start fresh: the file has none" in result.stdout
    assert "position table eva.pos_embed resized from [4, 4, 4] to [4, 6, 4] tokens" in result.stdout
    folder = os.path.join(env["nnUNet_results"], "Dataset991_E2E",
                          "nnUNetTrainerMiMPretrain_Primus_CPUsmoke__nnUNetPlans__3d_fullres", "fold_all")
    assert {"checkpoint_final.pth", "reconstruction_final.png", "progress.png"} <= set(os.listdir(folder))
    trained = torch.load(os.path.join(folder, "checkpoint_final.pth"), weights_only=False)["network_weights"]
    assert trained["eva.pos_embed"].shape == (1, 96, 96)
