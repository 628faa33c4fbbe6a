"""The pre-training step's memory: the prediction against the saved bytes measured on a real step, the
micro-batch chosen for common GPU sizes, checkpointed steps equal to plain ones, and the trainer acting on
the prediction (accumulation keeps the recipe) or refusing before the first step."""
import json

import pytest
import torch
from dynamic_network_architectures.building_blocks.patch_encode_decode import LayerNormNd

from helpers import nnunet_mim_in_process, python_in_process
from nnunet_mim.architecture import preset_kwargs
from nnunet_mim.architecture.blocks import ChannelLayerNorm
from nnunet_mim.masking import LevelConfig, build_levels
from nnunet_mim.pretraining.memory import (GIB, REFERENCE_PATCHES, DoesNotFit, choose_micro_batch, predict_step,
                                           usable_bytes)
from nnunet_mim.pretraining.model import MiMPretrainNetwork
from nnunet_mim.pretraining.objective import mim_objective

MIM, MAE = LevelConfig(), LevelConfig(num_levels=1, l1_mask_ratio=0.75)


def objective(network, levels_config, patch, batch=1, seed=0):
    torch.manual_seed(seed)
    crops = torch.randn(batch, 1, *[p * levels_config.crop_factor for p in patch])
    levels = build_levels(crops, levels_config, torch.Generator().manual_seed(seed))
    mim = levels_config.num_levels > 1
    return mim_objective(network, network.alignment, levels, 16, (1.0, 1.0, 1.0)[:levels_config.num_levels],
                         0.1 if mim else 0.0)["loss"]


def measured_saved_bytes(network, levels_config, patch, batch=1):
    """Every storage autograd keeps for the backward of one real step, counted once."""
    storages = {}

    def pack(tensor):
        storages[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), torch.autocast("cpu", dtype=torch.bfloat16):
        objective(network, levels_config, patch, batch)
    return sum(storages.values())


@pytest.mark.parametrize("levels, patch, batch", [(MAE, (64, 64, 64), 2), (MAE, (32, 96, 64), 1),
                                                  (MIM, (64, 64, 64), 1), (MIM, (32, 64, 64), 2)])
def test_the_prediction_is_the_saved_bytes_of_a_real_step(levels, patch, batch):
    """Fitted on one volume at the reference patches, it holds for whole MiM and MAE steps at other sizes
    and shapes (MiM's 21 volumes, padded to the most visible tokens of any level)."""
    assert tuple(patch) not in REFERENCE_PATCHES
    network = MiMPretrainNetwork(1, 2, alignment_pairs=2 if levels.num_levels > 1 else 0, **preset_kwargs("T"))
    predicted = predict_step(preset_kwargs("T"), levels, patch, batch).saved
    assert predicted == pytest.approx(measured_saved_bytes(network, levels, patch, batch), rel=0.02)


def test_the_channel_norm_is_dynamic_network_architectures_layernorm_with_fewer_saved_bytes():
    reference, norm = LayerNormNd(48), ChannelLayerNorm(48)
    with torch.no_grad():
        reference.weight.normal_()
        reference.bias.normal_()
    norm.load_state_dict(reference.state_dict())  # the same keys: checkpoints of either load in the other
    x = torch.randn(2, 48, 6, 8, 10) * 3 + 1
    torch.testing.assert_close(norm(x), reference(x), atol=1e-5, rtol=1e-5)

    def saved(module):
        storages = {}
        with torch.autograd.graph.saved_tensors_hooks(
                lambda t: storages.setdefault(t.untyped_storage().data_ptr(), t.untyped_storage().nbytes()) and t,
                lambda t: t):
            module(x.clone().requires_grad_())
        return sum(storages.values())
    assert saved(norm) < 0.6 * saved(reference)


B = preset_kwargs("B")


@pytest.mark.parametrize("patch", [(96, 96, 96), (128, 128, 128), (160, 160, 160), (64, 192, 160)])
@pytest.mark.parametrize("gib", [24, 40, 80, 141])
@pytest.mark.parametrize("levels", [MIM, MAE], ids=["MiM", "MAE"])
def test_the_micro_batch_is_the_largest_that_fits(levels, gib, patch):
    budget = usable_bytes(gib * GIB)
    try:
        step = choose_micro_batch(B, levels, patch, 2, gib * GIB)
    except DoesNotFit as error:
        # refused only when one checkpointed sample does not fit, with the prediction in the message
        assert predict_step(B, levels, patch, 1, checkpointing=True).total > budget
        assert "GiB" in str(error) and "does not fit" in str(error)
        assert levels is MIM and patch == (160, 160, 160) and gib < 80  # the goals: see the last test
        return
    assert step.total <= budget
    if step.micro_batch < 2:  # the plan's batch does not fit
        assert predict_step(B, levels, patch, 2, checkpointing=step.checkpointing).total > budget
    if step.checkpointing:  # only where no sample fits without it
        assert predict_step(B, levels, patch, 1).total > budget


def test_the_defaults_fit_80_gb_up_to_192_cubed_and_24_gb_up_to_128_cubed():
    for levels in (MIM, MAE):
        for side in (96, 128, 160, 192):
            choose_micro_batch(B, levels, (side,) * 3, 2, 80 * GIB)
        for side in (96, 128):
            choose_micro_batch(B, levels, (side,) * 3, 2, 24 * GIB)


def test_a_requested_micro_batch_is_checked_not_chosen():
    with pytest.raises(DoesNotFit, match="micro-batch 2 does not fit"):
        choose_micro_batch(B, MIM, (128, 128, 128), 2, 24 * GIB, micro_batch=2)
    with pytest.raises(DoesNotFit, match="does not divide"):
        choose_micro_batch(B, MIM, (96, 96, 96), 2, 80 * GIB, micro_batch=3)
    assert choose_micro_batch(B, MIM, (96, 96, 96), 2, 80 * GIB, micro_batch=1).micro_batch == 1


def test_checkpointed_conv_blocks_give_the_plain_steps_gradients():
    network = MiMPretrainNetwork(1, 2, alignment_pairs=2, **preset_kwargs("T"))

    def gradients(checkpointing):
        for stage in network.encoder.stages:
            stage.checkpoint_blocks = checkpointing
        network.zero_grad()
        objective(network, MIM, (64, 64, 64), seed=3).backward()
        return [p.grad.clone() for p in network.parameters() if p.grad is not None]
    plain, checkpointed = gradients(False), gradients(True)
    assert len(plain) == len(checkpointed) > 0
    for a, b in zip(plain, checkpointed):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


# the E2E dataset's plan batch of 2 at preset T: a GPU size where only micro-batch 1 fits, one where only a
# checkpointed micro-batch 1 fits, one where nothing does
TRAINER_SCRIPT = """
import json
from helpers import trainer_on_test_dataset
from nnunet_mim.pretraining.memory import GIB, RESERVE_BYTES, USABLE_FRACTION, predict_step
from nnunet_mim.variants import nnUNetTrainerMiMPretrain_T_CPUsmoke

t = trainer_on_test_dataset(nnUNetTrainerMiMPretrain_T_CPUsmoke)
kwargs, patch = t.configuration_manager.network_arch_init_kwargs, t.configuration_manager.patch_size
need = lambda batch, checkpointing: predict_step(kwargs, t.levels, patch, batch, 1, None, checkpointing).total
gib = lambda total: (total / USABLE_FRACTION + RESERVE_BYTES) / GIB
print(json.dumps({"plan_batch": t.configuration_manager.batch_size, "recipe": t.recipe.describe(),
                  "iterations": t.num_iterations_per_epoch, "lr": t.recipe.lr,
                  "one_fits": gib((need(1, False) + need(2, False)) / 2),
                  "only_checkpointed_fits": gib((need(1, True) + need(1, False)) / 2),
                  "checkpointing_helps": need(1, True) < need(1, False)}))
"""

STARTED = """
import json, os, torch
from helpers import trainer_on_test_dataset
from nnunet_mim.variants import nnUNetTrainerMiMPretrain_T_CPUsmoke
t = trainer_on_test_dataset(nnUNetTrainerMiMPretrain_T_CPUsmoke, started=True)
step = t.train_step(next(t.dataloader_train))
print(json.dumps({"batch": t.batch_size, "recipe": t.recipe.describe(), "iterations": t.num_iterations_per_epoch,
                  "lr": t.recipe.lr, "loss": float(step["loss"]), "data": list(next(t.dataloader_train)["data"].shape),
                  "checkpointed": [s.checkpoint_blocks for s in t.pretrain_network.encoder.stages]}))
"""


def last_json(result):
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_the_trainer_runs_the_micro_batch_that_fits_and_keeps_the_recipe(nnunet_env):
    sizes = last_json(python_in_process(TRAINER_SCRIPT, nnunet_env))
    assert sizes["plan_batch"] == 2 and sizes["checkpointing_helps"]
    env = dict(nnunet_env, NNUNET_MIM_AMP="off", NNUNET_MIM_GPU_MEMORY_GB=str(sizes["one_fits"]))
    out = last_json(python_in_process(STARTED, env))
    assert out["batch"] == 1 and out["data"][0] == 1 and out["checkpointed"] == [False] * 3
    assert "micro-batch 1 (all ranks) x 2 accumulation steps = effective batch 2" in out["recipe"]
    assert out["lr"] == sizes["lr"] and out["iterations"] == 2 * sizes["iterations"]  # same optimizer steps
    assert 0 < out["loss"] < 10
    env["NNUNET_MIM_GPU_MEMORY_GB"] = str(sizes["only_checkpointed_fits"])
    out = last_json(python_in_process(STARTED, env))
    assert out["batch"] == 1 and out["checkpointed"] == [True] * 3 and 0 < out["loss"] < 10


@pytest.mark.parametrize("variables, message", [
    ({"NNUNET_MIM_GPU_MEMORY_GB": "1.6"}, "one sample does not fit"),
    ({"NNUNET_MIM_GPU_MEMORY_GB": "80", "NNUNET_MIM_MICRO_BATCH": "3"}, "does not divide"),
    ({"NNUNET_MIM_GPU_MEMORY_GB": "1.6", "NNUNET_MIM_MICRO_BATCH": "1"}, "micro-batch 1 does not fit"),
    ({"NNUNET_MIM_GPU_MEMORY_GB": "-4"}, "positive number"),
])
def test_a_step_that_cannot_fit_is_refused_before_training(nnunet_env, variables, message):
    result = python_in_process(STARTED, dict(nnunet_env, NNUNET_MIM_AMP="off", **variables), check=False)
    assert result.returncode != 0 and message in result.stderr
    assert "train_step" not in result.stderr  # refused in initialize, before any step


def test_pretrain_plan_answers_without_a_gpu(nnunet_env):
    out = nnunet_mim_in_process(["pretrain-plan", "991", "--gpu-memory", "24", "80"], nnunet_env).stdout
    assert "Dataset991_E2E" in out and out.count("| nnUNetTrainerMiMPretrain |") == 2
    refused = nnunet_mim_in_process(["pretrain-plan", "--patch", "160", "160", "160", "--batch", "2",
                                     "--gpu-memory", "24"], nnunet_env, check=False)
    assert refused.returncode == 1 and "one sample does not fit at patch [160, 160, 160] on 24 GiB" in refused.stdout
    for bad in (["--gpu-memory", "0", "--patch", "96", "96", "96", "--batch", "2"], ["991", "--batch", "2"],
                ["991", "--trainers", "nnUNetTrainer"], ["999"]):
        result = nnunet_mim_in_process(["pretrain-plan", *bad], nnunet_env, check=False)
        assert result.returncode == 2 and result.stderr.strip(), (bad, result.stderr)


def test_pretrain_plan_reads_an_inherited_configuration(tmp_path, monkeypatch):
    from nnunet_mim.pretraining.fit import plans_patch_and_batch
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    (tmp_path / "Dataset123_X").mkdir()
    (tmp_path / "Dataset123_X" / "nnUNetPlans.json").write_text(json.dumps({"configurations": {
        "3d_fullres": {"patch_size": [96, 96, 96], "batch_size": 2},
        "3d_child": {"inherits_from": "3d_fullres", "batch_size": 4},
        "3d_loop": {"inherits_from": "3d_loop"}}}))
    assert plans_patch_and_batch("Dataset123_X", "nnUNetPlans", "3d_child") == ("Dataset123_X", [96, 96, 96], 4)
    with pytest.raises(ValueError, match="inherits from '3d_loop', which it cannot"):
        plans_patch_and_batch("Dataset123_X", "nnUNetPlans", "3d_loop")
