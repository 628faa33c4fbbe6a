"""The pre-training recipe: accumulation to an effective batch, the lr scaled on it, the schedule in
optimizer steps, a non-finite micro-step discarding its whole accumulation, and --c resuming on an
accumulation boundary exactly (the real trainer on the end-to-end dataset)."""
import json

import pytest

from helpers import python_in_process
from nnunet_mim.pretraining.recipe import PretrainingRecipe

# a trainer with two micro-steps per optimizer step on the end-to-end dataset (plan batch 2), built
# the way nnUNetv2_train builds it
ACCUMULATING_TRAINER = """
import json, shutil, torch
from helpers import trainer_on_test_dataset
from nnunet_mim.variants import nnUNetTrainerMAEPretrain_T_CPUsmoke

class nnUNetTrainerMAEPretrain_Accumulating(nnUNetTrainerMAEPretrain_T_CPUsmoke):
    effective_batch, iterations_per_epoch = 4, 4  # two optimizer steps of two micro-steps per epoch

def trainer(epochs):
    t = trainer_on_test_dataset(nnUNetTrainerMAEPretrain_Accumulating)
    t.num_epochs = epochs
    return t
"""

# the trainer at its first micro-step, a batch, and the network's weights to compare
STARTED_TRAINER = ACCUMULATING_TRAINER + """
t = trainer(2)
t.initialize()
t.dataloader_train, t.dataloader_val = t.get_dataloaders()
t.on_train_epoch_start()
batch = next(t.dataloader_train)
weights = lambda: [p.detach().clone() for p in t.network.parameters()]
equal = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b))
"""

NON_FINITE_SCRIPT = STARTED_TRAINER + """
bad = dict(batch, data=torch.full_like(batch["data"], float("nan")))
start = weights()
steps = [t.train_step(bad), t.train_step(batch)]  # the first micro-step is non-finite
after_discard = weights()
lr_first = (t.optimizer.param_groups[0]["lr"], t.lr_scheduler.lr_at(0))
steps += [t.train_step(batch), t.train_step(batch)]
lr_second = (t.optimizer.param_groups[0]["lr"], t.lr_scheduler.lr_at(1))
print(json.dumps({"skipped": [s["skipped"] for s in steps], "counter": t.skipped_steps,
                  "unchanged_after_discard": equal(start, after_discard), "moved_after": not equal(start, weights()),
                  "lr_first": lr_first, "lr_second": lr_second, "recipe": t.recipe.describe()}))
"""

RESUME_SCRIPT = ACCUMULATING_TRAINER + """
def losses(t):
    return [float(v) for v in t.logger.get_value("train_losses", None)]
uninterrupted = trainer(2)
uninterrupted.run_training()
shutil.rmtree(uninterrupted.output_folder)  # a new run refuses to start over an earlier one
first = trainer(1)
first.run_training()  # stops after epoch 0 (two optimizer steps) and writes checkpoint_final.pth
resumed = trainer(2)
resumed.load_checkpoint(first.output_folder + "/checkpoint_final.pth")
resumed.run_training()
print(json.dumps({"uninterrupted": losses(uninterrupted), "resumed": losses(resumed)}))
"""


def test_recipe_accumulates_to_the_effective_batch():
    recipe = PretrainingRecipe(plan_batch=2, target_batch=512, base_lr=1e-4)
    assert (recipe.accumulation_steps, recipe.effective_batch, recipe.lr) == (256, 512, 2e-4)
    uneven = PretrainingRecipe(plan_batch=3, target_batch=8, base_lr=1e-4)  # rounded up to whole micro-steps
    assert (uneven.accumulation_steps, uneven.effective_batch) == (3, 9)
    assert uneven.lr == pytest.approx(1e-4 * 9 / 256)
    small = PretrainingRecipe(plan_batch=4, target_batch=2, base_lr=1e-4)  # the plan batch already exceeds it
    assert (small.accumulation_steps, small.effective_batch) == (1, 4)
    assert "micro-batch 2 (all ranks) x 256 accumulation steps = effective batch 512" in recipe.describe()
    with pytest.raises(ValueError, match="positive"):
        PretrainingRecipe(plan_batch=2, target_batch=0, base_lr=1e-4)


def test_default_trainer_lr_is_the_measured_one_not_the_papers_at_batch_2():
    """The review's defect: the default trainer ran at 1e-4 x 2 / 256 = 7.8e-7."""
    from nnunet_mim.pretraining.trainer import nnUNetTrainerMAEPretrain, nnUNetTrainerMiMPretrain
    from nnunet_mim.variants import nnUNetTrainerMiMPretrain_PaperRecipe
    for trainer in (nnUNetTrainerMiMPretrain, nnUNetTrainerMAEPretrain):
        assert PretrainingRecipe(2, trainer.effective_batch, trainer.base_lr).lr == pytest.approx(1e-3)
    paper = PretrainingRecipe(2, nnUNetTrainerMiMPretrain_PaperRecipe.effective_batch,
                              nnUNetTrainerMiMPretrain_PaperRecipe.base_lr)
    assert (paper.accumulation_steps, paper.effective_batch, paper.lr) == (64, 128, pytest.approx(2e-4))


PAPER_LENGTH = """
import json
from helpers import trainer_on_test_dataset
from nnunet_mim.variants import nnUNetTrainerMiMPretrain_PaperRecipe
t = trainer_on_test_dataset(nnUNetTrainerMiMPretrain_PaperRecipe)
cases = len(t.do_split()[0])
t.initialize()
print(json.dumps({"cases": cases, "epochs": t.num_epochs, "warmup": t.run_warmup_epochs,
                  "steps_per_epoch": t.optimizer_steps_per_epoch, "effective": t.recipe.effective_batch,
                  "lr": t.recipe.lr, "peak_lr": t.lr_scheduler.peak_lr,
                  "scheduled_steps": t.lr_scheduler.max_epochs, "warmup_steps": t.lr_scheduler.warmup_epochs}))
"""


def test_the_paper_recipe_makes_the_papers_optimizer_steps_for_the_dataset(nnunet_env):
    """800 passes over the training cases at 128 crops per optimizer step, 40 of them warm-up: the schedule
    counts those optimizer steps, whatever nnU-Net calls an epoch."""
    import json
    out = json.loads(python_in_process(PAPER_LENGTH, nnunet_env).stdout.strip().splitlines()[-1])
    steps = 800 * out["cases"] / 128
    assert out["effective"] == 128 and out["lr"] == pytest.approx(2e-4) == out["peak_lr"]
    assert out["scheduled_steps"] == out["epochs"] * out["steps_per_epoch"]
    assert steps <= out["scheduled_steps"] < steps + out["steps_per_epoch"]  # whole epochs, nothing short
    assert out["warmup_steps"] == pytest.approx(40 * out["cases"] / 128, abs=out["steps_per_epoch"])


def test_the_target_momentum_follows_its_schedule():
    from types import SimpleNamespace

    from nnunet_mim.pretraining.trainer import nnUNetTrainerMiMPretrain
    trainer = SimpleNamespace(num_epochs=10, optimizer_steps_per_epoch=5, alignment_target_momentum=(0.996, 1.0))
    at = lambda step: nnUNetTrainerMiMPretrain.target_momentum(trainer, step)  # noqa: E731
    assert at(0) == pytest.approx(0.996) and at(49) == pytest.approx(1.0)
    assert at(0) < at(10) < at(25) < at(40) < at(49)  # BYOL's cosine rise
    trainer.alignment_target_momentum = (0.99, 0.99)  # the default: constant
    assert [at(step) for step in (0, 20, 49)] == pytest.approx([0.99] * 3)


def test_a_non_finite_micro_step_discards_its_whole_accumulation(nnunet_env):
    out = json.loads(python_in_process(NON_FINITE_SCRIPT, nnunet_env).stdout.strip().splitlines()[-1])
    assert out["skipped"] == [0, 1, 0, 0], out  # reported on the micro-step that ends the accumulation
    assert out["counter"] == 1
    assert out["unchanged_after_discard"] and out["moved_after"]
    # the schedule counts optimizer steps: the second accumulation runs at step 1's rate
    for lr, expected in (out["lr_first"], out["lr_second"]):
        assert lr == pytest.approx(expected)
    assert out["lr_first"][0] < out["lr_second"][0]  # warming up
    assert "x 2 accumulation steps = effective batch 4" in out["recipe"]


def test_resume_continues_exactly_on_an_accumulation_boundary(nnunet_env):
    """A run stopped after epoch 0 and continued from its checkpoint has the same epoch-1 loss
    as the run that never stopped: weights, optimizer, mask and crop generators all restored, and
    the epoch ended on an optimizer step."""
    losses = json.loads(python_in_process(RESUME_SCRIPT, nnunet_env).stdout.strip().splitlines()[-1])
    assert losses["resumed"][0] == losses["uninterrupted"][0]  # same seeded start
    assert abs(losses["resumed"][1] - losses["uninterrupted"][1]) < 1e-6, losses


MIXED_PRECISION_SCRIPT = STARTED_TRAINER + """
computed_in = set()  # the dtype a linear layer of the forward computed in: autocast was entered
t.pretrain_network.encoder.blocks[0].attn.proj.register_forward_hook(lambda m, i, o: computed_in.add(str(o.dtype)))
steps = [t.train_step(batch), t.train_step(batch)]
out = {"amp": str(t.amp_dtype), "scaler": t.grad_scaler is not None, "losses": [float(s["loss"]) for s in steps],
       "computed_in": sorted(computed_in),
       "master_fp32": all(p.dtype == torch.float32 for p in t.network.parameters()), "counter": t.skipped_steps}
if t.grad_scaler is not None:  # force an fp16 overflow: a scale no fp16 gradient survives
    t.grad_scaler.update(2.0 ** 120)
    before = weights()
    overflow = [t.train_step(batch), t.train_step(batch)]
    out.update(overflow_skipped=overflow[-1]["skipped"], counter_after=t.skipped_steps,
               unchanged=equal(before, weights()), scale_lowered=t.grad_scaler.get_scale() < 2.0 ** 120)
print(json.dumps(out))
"""


@pytest.mark.parametrize("amp, scaler", [("bf16", False), ("fp16", True)])
def test_mixed_precision_steps_of_the_real_trainer_run_on_the_cpu(nnunet_env, amp, scaler):
    """The autocast branch that only a GPU took: finite losses, fp32 master weights; with fp16 the scaler,
    and an overflow discards the step, counts it and lowers the scale."""
    env = dict(nnunet_env, NNUNET_MIM_AMP=amp)
    out = json.loads(python_in_process(MIXED_PRECISION_SCRIPT, env).stdout.strip().splitlines()[-1])
    dtype = {"bf16": "torch.bfloat16", "fp16": "torch.float16"}[amp]
    assert out["amp"] == dtype and out["computed_in"] == [dtype] and out["scaler"] == scaler
    assert all(0 < loss < 10 for loss in out["losses"]) and out["master_fp32"] and out["counter"] == 0
    if scaler:
        assert out["overflow_skipped"] == 1 and out["counter_after"] == 1
        assert out["unchanged"] and out["scale_lowered"]


COMPILE_DECISION_SCRIPT = ACCUMULATING_TRAINER + """
t = trainer(1)
t.device = torch.device("cuda")  # what nnU-Net would compile for; nothing runs on it here
logged = []
t.print_to_log_file = lambda *args, **kwargs: logged.append(" ".join(map(str, args)))
print(json.dumps({"compiles": t._do_i_compile(), "logged": logged}))
"""


@pytest.mark.parametrize("setting, compiles", [(None, False), ("t", True), ("f", False)])
def test_pretraining_compiles_only_when_asked(nnunet_env, setting, compiles):
    """nnU-Net compiles every CUDA run's network; pre-training only with nnUNet_compile=t until a GPU measured
    the gain, and says so."""
    env = {k: v for k, v in nnunet_env.items() if k != "nnUNet_compile"}
    if setting:
        env["nnUNet_compile"] = setting
    out = json.loads(python_in_process(COMPILE_DECISION_SCRIPT, env).stdout.strip().splitlines()[-1])
    assert out["compiles"] is compiles
    assert ("torch.compile is off for pre-training" in " ".join(out["logged"])) is (setting is None)
