"""End to end through nnU-Net's own commands, as a user runs them (tiny data, CPU, seconds per step).

One module-scoped dataset: plan and preprocess -> MiM pre-training -> fine-tuning with stock
-pretrained_weights -> nnUNetv2_predict; plus the loud failures.
"""
import json
import os
import shutil

import pytest

from helpers import nnunet_mim_in_process, nnunet_train_in_process, python_in_process, run
from test_checkpoint import WritesAMarker
from nnunet_mim.demo import nnunet_command
from nnunet_mim.environment import trainers_path

PRETRAIN = "nnUNetTrainerMiMPretrain_T_CPUsmoke"
FINETUNE = "nnUNetTrainerMiMFinetune_T_CPUsmoke"
SCRATCH = "nnUNetTrainerMiMScratch_T_CPUsmoke"


def train(env, trainer, *extra, check=True, in_process=True):
    """nnUNetv2_train on the e2e dataset; in this process unless asked (the fixtures' pre-training and
    fine-tuning run as the console script, in a process of their own, as a user runs them)."""
    args = ["991", "3d_fullres", "all", "-tr", trainer, "-device", "cpu", *extra]
    if not in_process:
        return run([nnunet_command("nnUNetv2_train"), *args], env, check)
    return nnunet_train_in_process(args, env, check)


def output_folder(env, trainer):
    return os.path.join(env["nnUNet_results"], "Dataset991_E2E", f"{trainer}__nnUNetPlans__3d_fullres", "fold_all")


@pytest.fixture(scope="module")
def pretrained(nnunet_env):
    train(nnunet_env, PRETRAIN, in_process=False)
    return os.path.join(output_folder(nnunet_env, PRETRAIN), "checkpoint_final.pth")


@pytest.fixture(scope="module")
def finetuned(nnunet_env, pretrained):
    """stdout of the fine-tuning run from the pre-trained weights."""
    return train(nnunet_env, FINETUNE, "-pretrained_weights", pretrained, in_process=False).stdout


def test_pretraining_outputs(nnunet_env, pretrained):
    import torch
    folder = output_folder(nnunet_env, PRETRAIN)
    for name in ("checkpoint_final.pth", "progress.png", "reconstruction_final.png"):
        assert os.path.isfile(os.path.join(folder, name)), name
    checkpoint = torch.load(pretrained, map_location="cpu", weights_only=False)
    assert checkpoint["trainer_name"] == PRETRAIN
    assert checkpoint["nnunet_mim"]["method"] == "MiM" and checkpoint["nnunet_mim"]["token_size"] == 16
    assert checkpoint["nnunet_mim"]["alignment_weight"] > 0  # tells MiM from MiM-noalign (--pretrained-weights)
    log = checkpoint["logging"]
    assert len(log["train_rec_l3"]) == 2 and len(log["val_align_l1_l2"]) == 2
    assert not any(f.endswith(".partial") for f in os.listdir(folder))
    # the smoke plan's 32^3 patch gives single-token octants: the log says what that costs MiM
    (log_file,) = [f for f in os.listdir(folder) if f.startswith("training_log")]
    with open(os.path.join(folder, log_file)) as f:
        text = f.read()
    assert "an L1 octant is [1, 1, 1] tokens" in text
    # the recipe, stated once: lr, micro-batch, accumulation, effective batch
    assert "MiM pre-training recipe: lr 0.001 (= 0.128 x 2 / 256); micro-batch 2 (all ranks) x 1 accumulation " \
           "steps = effective batch 2" in text
    assert checkpoint["nnunet_mim"]["effective_batch"] == 2 and checkpoint["nnunet_mim"]["alignment_predictor"]


def test_pretraining_keeps_snapshots_a_probe_reads(nnunet_env, pretrained):
    """checkpoint_epoch_NNNN.pth at 0, 25% and 50% of the run (2 epochs: epochs 0 and 1), each recording the
    epochs it had done; the first holds the initialised network, the others trained ones."""
    import torch
    from nnunet_mim.finetuning.checkpoint import pretraining_record_of
    folder = output_folder(nnunet_env, PRETRAIN)
    snapshots = sorted(f for f in os.listdir(folder) if f.startswith("checkpoint_epoch_"))
    assert snapshots == ["checkpoint_epoch_0000.pth", "checkpoint_epoch_0001.pth"]
    weights = {}
    for name, done in zip([*snapshots, "checkpoint_final.pth"], (0, 1, 2)):
        checkpoint = torch.load(os.path.join(folder, name), map_location="cpu", weights_only=False)
        assert pretraining_record_of(name, checkpoint).epochs == done, name
        assert checkpoint["current_epoch"] == done, name  # what --c continues from: the epochs done
        weights[done] = checkpoint["network_weights"]["encoder.blocks.0.attn.qkv.weight"]
    assert not torch.equal(weights[0], weights[1]) and not torch.equal(weights[1], weights[2])


CHECKPOINT_INTERVAL_SCRIPT = """
import json, torch
from nnunetv2.run.run_training import get_trainer_from_args
trainers = {name: get_trainer_from_args("991", "3d_fullres", "all", name, device=torch.device("cpu"))
            for name in NAMES}
print(json.dumps({name: (t.num_epochs, t.save_every) for name, t in trainers.items()}))
"""


def test_cpu_budgets_write_checkpoint_latest_within_the_run(nnunet_env):
    """nnU-Net writes checkpoint_latest.pth every `save_every` epochs (50 by default): the 10- and
    30-epoch CPU budgets must write it during the run, so that --c after a kill loses little."""
    names = ["nnUNetTrainerMiMFinetune_T_CPUdemo", "nnUNetTrainerMiMScratch_T_CPUlong_DecoderFirst",
             "nnUNetTrainerStockCNN_CPUlong"]
    out = python_in_process(f"NAMES = {names!r}\n" + CHECKPOINT_INTERVAL_SCRIPT, nnunet_env).stdout.strip().splitlines()
    intervals = json.loads(out[-1])
    assert set(intervals) == set(names)
    assert all(every < epochs for epochs, every in intervals.values()), intervals


def test_finetune_loads_and_predicts(nnunet_env, finetuned, tmp_path):
    assert "encoder tensors loaded: 100.0%" in finetuned
    folder = output_folder(nnunet_env, FINETUNE)
    report = json.load(open(os.path.join(folder, "pretrained_weights_report.json")))
    assert report["pretraining"]["method"] == "MiM"
    assert not any(".seg_layers." in k for k in report["loaded"])
    assert any(k.startswith("reconstruction.") for k in report["unused_checkpoint_keys"])
    plans = json.load(open(os.path.join(os.path.dirname(folder), "plans.json")))
    assert plans["configurations"]["3d_fullres"]["architecture"]["network_class_name"].endswith("MiMHybridUNet")
    out = tmp_path / "pred"
    run([nnunet_command("nnUNetv2_predict"), "-i", os.path.join(nnunet_env["nnUNet_raw"], "Dataset991_E2E",
         "imagesTs"), "-o", str(out), "-d", "991", "-c", "3d_fullres", "-tr", FINETUNE, "-f", "all",
         "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], nnunet_env)
    assert sorted(os.listdir(out)) == ["dataset.json", "mni_005.nii.gz", "plans.json",
                                       "predict_from_raw_data_args.json"]
    # the pre-training run's folder segments nothing: nnUNetv2_predict on it fails, naming the trainer to use
    refused = run([nnunet_command("nnUNetv2_predict"), "-i", os.path.join(nnunet_env["nnUNet_raw"], "Dataset991_E2E",
                   "imagesTs"), "-o", str(tmp_path / "pretraining_pred"), "-d", "991", "-c", "3d_fullres", "-tr",
                   PRETRAIN, "-f", "all", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"], nnunet_env,
                  check=False)
    assert refused.returncode != 0 and "Fine-tune it first" in refused.stderr and "nnUNetTrainerMiMFinetune" in \
        refused.stderr
    assert not [f for f in os.listdir(tmp_path / "pretraining_pred") if f.endswith(".nii.gz")]


def test_scratch_differs_from_finetune_only_in_initial_weights(nnunet_env, finetuned):
    train(nnunet_env, SCRATCH)
    debug = {t: json.load(open(os.path.join(output_folder(nnunet_env, t), "debug.json")))
             for t in (FINETUNE, SCRATCH)}
    # nnU-Net dumps every trainer attribute: all settings agree, only names, paths and objects differ
    differing = {k for k in debug[FINETUNE] if debug[FINETUNE][k] != debug[SCRATCH].get(k)}
    settings = {k for k in differing
                if " at 0x" not in str(debug[FINETUNE][k]) and FINETUNE not in str(debug[FINETUNE][k])}
    # the one other difference is where the initial weights came from: the checkpoint's keys
    assert settings == {"_checkpoint_keys"}, settings
    assert debug[SCRATCH]["_checkpoint_keys"] == "None"
    assert "<weights snapshot" in debug[FINETUNE]["_initial_weights"]
    plans = [json.load(open(os.path.join(os.path.dirname(output_folder(nnunet_env, t)), "plans.json")))
             for t in (FINETUNE, SCRATCH)]
    assert plans[0] == plans[1]


def test_finetuning_runs_are_seeded(nnunet_env, tmp_path):
    """The same command twice gives the same weights: arms of a benchmark differ only where they
    should (needs the scratch run of the test above)."""
    import torch
    first = os.path.join(output_folder(nnunet_env, SCRATCH), "checkpoint_final.pth")
    if not os.path.isfile(first):
        pytest.skip("needs test_scratch_differs_from_finetune_only_in_initial_weights")
    again = dict(nnunet_env, nnUNet_results=str(tmp_path))
    train(again, SCRATCH)
    second = os.path.join(str(tmp_path), *output_folder(nnunet_env, SCRATCH).split(os.sep)[-3:],
                          "checkpoint_final.pth")
    a, b = (torch.load(f, map_location="cpu", weights_only=False)["network_weights"] for f in (first, second))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_frozen_encoder_keeps_every_pretrained_tensor_as_loaded(nnunet_env, pretrained):
    """nnUNetv2_train -tr ..._FrozenEncoder -pretrained_weights (the benchmark's frozen-encoder
    probe): every pre-trained encoder tensor ends training exactly as the checkpoint holds it (that
    the new layers train under the same optimizer groups: tests/test_schedule.py)."""
    import torch
    from nnunet_mim.finetuning.param_groups import NEW_PREFIXES
    trainer = FINETUNE + "_FrozenEncoder"
    train(nnunet_env, trainer, "-pretrained_weights", pretrained)
    folder = output_folder(nnunet_env, trainer)
    final = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu",
                       weights_only=False)["network_weights"]
    source = torch.load(pretrained, map_location="cpu", weights_only=False)["network_weights"]
    loaded = json.load(open(os.path.join(folder, "pretrained_weights_report.json")))["loaded"]
    frozen = [k for k in loaded if not k.startswith(NEW_PREFIXES)]
    assert len(frozen) > 20
    assert [k for k in frozen if not torch.equal(final[k], source[k])] == []


def test_a_transplanted_supervised_encoder_is_what_a_frozen_encoder_run_keeps(nnunet_env, pretrained, finetuned,
                                                                               tmp_path):
    """nnunet-mim adapt-checkpoint --encoder-from (the probe's positive control): the encoder of a model
    trained with labels, put into the pre-training checkpoint, is loaded, reported as supervised
    pre-training, and kept to the end by a frozen-encoder run."""
    import torch
    from nnunet_mim.finetuning.param_groups import NEW_PREFIXES
    segmentation = os.path.join(output_folder(nnunet_env, FINETUNE), "checkpoint_final.pth")
    transplanted = str(tmp_path / "supervised.pth")
    nnunet_mim_in_process(["adapt-checkpoint", pretrained, "--encoder-from", segmentation, "-o", transplanted],
                          nnunet_env)
    env = dict(nnunet_env, nnUNet_results=str(tmp_path / "results"))
    trainer = FINETUNE + "_FrozenEncoder"
    report = train(env, trainer, "-pretrained_weights", transplanted).stdout
    assert "source: supervised pre-training" in report and "unused by the token-level" not in report
    folder = output_folder(env, trainer)
    final = torch.load(os.path.join(folder, "checkpoint_final.pth"), map_location="cpu",
                       weights_only=False)["network_weights"]
    source, pretraining = (torch.load(f, map_location="cpu", weights_only=False)["network_weights"]
                           for f in (segmentation, pretrained))
    loaded = json.load(open(os.path.join(folder, "pretrained_weights_report.json")))["loaded"]
    frozen = [k for k in loaded if not k.startswith(NEW_PREFIXES)]
    assert len(frozen) > 20 and [k for k in frozen if not torch.equal(final[k], source[k])] == []
    assert [k for k in frozen if torch.equal(source[k], pretraining[k])] == []  # fine-tuning moved every one


def test_finetune_on_another_dataset_with_other_channels_classes_spacing(nnunet_env, pretrained, tmp_path):
    import torch
    from nnunet_mim.data.example import write_example_dataset
    env = dict(nnunet_env)
    env.pop("nnUNet_n_proc_DA")
    write_example_dataset(env["nnUNet_raw"], 992, num_train=4, num_test=1, spacing_mm=3.5, name="Other",
                          channels=2, binary=True, seed=1)
    run([nnunet_command("nnUNetv2_plan_and_preprocess"), "-d", "992", "-c", "3d_fullres", "-np", "1", "-npfp", "1"],
        env)
    env["nnUNet_n_proc_DA"] = "0"
    args = ["992", "3d_fullres", "all", "-tr", FINETUNE, "-device", "cpu"]
    refused = nnunet_train_in_process(args + ["-pretrained_weights", pretrained], env, check=False)
    assert refused.returncode != 0 and "nnunet-mim adapt-checkpoint" in refused.stderr
    adapted = str(tmp_path / "adapted.pth")
    nnunet_mim_in_process(["adapt-checkpoint", pretrained, "--input-channels", "2", "-o", adapted], env)
    result = nnunet_train_in_process(args + ["-pretrained_weights", adapted], env)
    assert result.returncode == 0 and "encoder tensors loaded: 100.0%" in result.stdout
    assert "adapted to 2" in result.stdout
    folder = os.path.join(env["nnUNet_results"], "Dataset992_Other", f"{FINETUNE}__nnUNetPlans__3d_fullres")
    plans = json.load(open(os.path.join(folder, "plans.json")))["configurations"]["3d_fullres"]
    source = torch.load(pretrained, map_location="cpu", weights_only=False)["nnunet_mim"]
    assert plans["spacing"] == [3.5, 3.5, 3.5] != source["spacing"]
    assert plans["patch_size"] != source["patch_size"], (plans["patch_size"], source["patch_size"])


def test_not_a_pretraining_checkpoint_is_refused(nnunet_env, pretrained, finetuned, tmp_path):
    """Through nnUNetv2_train, before nnU-Net's own loader: a crafted file and a segmentation run's checkpoint. The
    fine-tuning trainer reads the file with the functions adapt-checkpoint uses, whose every refusal (corrupt,
    truncated, missing, foreign, nnssl, malformed) is a row of tests/test_bad_input.py."""
    import torch
    crafted = str(tmp_path / "crafted.pth")  # a real checkpoint plus a call that a load would run
    checkpoint = torch.load(pretrained, map_location="cpu", weights_only=False)
    checkpoint["nnunet_mim"]["payload"] = WritesAMarker(tmp_path / "marker")
    torch.save(checkpoint, crafted)
    env = {k: v for k, v in nnunet_env.items() if k != "NNUNET_MIM_TRUST_CHECKPOINTS"}
    for path, message in [(crafted, "NNUNET_MIM_TRUST_CHECKPOINTS=1"),
                          (os.path.join(output_folder(nnunet_env, FINETUNE), "checkpoint_final.pth"),
                           f"is the checkpoint of a segmentation run ({FINETUNE}, trained with labels from MiM")]:
        result = train(env, "nnUNetTrainerMiMFinetune_T_CPUdemo", "-pretrained_weights", path, check=False)
        assert result.returncode != 0 and message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "marker").exists()  # refused before nnU-Net's own loader unpickles it


def test_checkpoints_of_every_trainer_load_without_trusting_them(nnunet_env, pretrained, finetuned):
    """The allow-list of the safe loader holds every global that checkpoints of our trainers need: pre-training
    (with its random states), its snapshots, fine-tuning and scratch (nnU-Net's logged metrics)."""
    from nnunet_mim.checkpointing import read_checkpoint
    folders = [output_folder(nnunet_env, t) for t in (PRETRAIN, FINETUNE, SCRATCH)]  # scratch: run by a test above
    files = [os.path.join(f, n) for f in folders if os.path.isdir(f) for n in os.listdir(f) if n.endswith(".pth")]
    assert len(files) >= 4
    for path in files:
        assert read_checkpoint(path)["network_weights"], path


def test_a_new_run_does_not_overwrite_an_earlier_one(nnunet_env, pretrained):
    final = os.path.join(output_folder(nnunet_env, PRETRAIN), "checkpoint_final.pth")
    before = os.path.getmtime(final)
    result = train(nnunet_env, PRETRAIN, check=False)
    assert result.returncode != 0 and "Continue it with --c" in result.stderr
    assert os.path.getmtime(final) == before


def test_continuing_another_trainers_checkpoint_is_refused(nnunet_env, pretrained):
    other = output_folder(nnunet_env, "nnUNetTrainerMiMPretrainNoAlign_T_CPUsmoke")
    os.makedirs(other)
    copied = os.path.join(other, "checkpoint_final.pth")
    shutil.copy(pretrained, copied)
    before = os.path.getmtime(copied)
    result = train(nnunet_env, "nnUNetTrainerMiMPretrainNoAlign_T_CPUsmoke", "--c", check=False)
    assert result.returncode != 0 and f"was written by trainer '{PRETRAIN}'" in result.stderr
    assert os.path.getmtime(copied) == before  # nothing overwritten (a training log is written)
    assert [f for f in os.listdir(other) if f.endswith(".pth")] == ["checkpoint_final.pth"]


def test_dataset_without_preprocessed_images_is_explained(nnunet_env):
    planned_only = os.path.join(nnunet_env["nnUNet_preprocessed"], "Dataset993_PlannedOnly")
    os.makedirs(planned_only)
    for name in ("nnUNetPlans.json", "dataset.json", "dataset_fingerprint.json"):
        shutil.copy(os.path.join(nnunet_env["nnUNet_preprocessed"], "Dataset991_E2E", name), planned_only)
    plans_file = os.path.join(planned_only, "nnUNetPlans.json")
    plans = json.load(open(plans_file))
    plans["dataset_name"] = "Dataset993_PlannedOnly"  # nnU-Net finds the images through this name
    json.dump(plans, open(plans_file, "w"))
    result = nnunet_train_in_process(["993", "3d_fullres", "all", "-tr", PRETRAIN, "-device", "cpu"], nnunet_env,
                                     check=False)
    assert result.returncode != 0 and "no preprocessed images in" in result.stderr
    assert "nnUNetv2_preprocess -d Dataset" in result.stderr


def test_finetune_without_weights_fails_loudly(nnunet_env):
    # another variant than the one that trained above, so that its results folder stays untouched
    result = train(nnunet_env, "nnUNetTrainerMiMFinetune_T_CPUdemo", check=False)
    assert result.returncode != 0
    assert "needs pre-trained weights" in result.stderr + result.stdout


def test_the_plans_option_is_not_taken_for_pretrained_weights():
    """nnUNetv2_train -p PLANS: argparse would read it as an abbreviation of -pretrained_weights."""
    from nnunet_mim.finetuning.load_report import pretrained_weights_from_argv
    argv = ["991", "3d_fullres", "0", "-tr", FINETUNE, "-p", "nnUNetResEncUNetMPlans", "-device", "cpu"]
    assert pretrained_weights_from_argv(argv) is None
    assert pretrained_weights_from_argv(argv + ["-pretrained_weights", "ckpt.pth"]) == "ckpt.pth"


def test_scratch_refuses_pretrained_weights(nnunet_env, pretrained):
    # a variant that has not trained yet: the smoke variant's folder holds a run (and would be refused)
    result = train(nnunet_env, "nnUNetTrainerMiMScratch_T_CPUdemo", "-pretrained_weights", pretrained, check=False)
    assert result.returncode != 0 and "trains from random weights" in result.stderr + result.stdout


def test_wrong_trainer_path_is_explained(nnunet_env):
    env = dict(nnunet_env, nnUNet_extTrainer="/nonexistent/trainers")
    result = nnunet_mim_in_process(["check"], env, check=False)
    assert result.returncode == 1
    assert 'eval "$(nnunet-mim env)"' in result.stderr and trainers_path() in result.stderr
    ok = nnunet_mim_in_process(["check"], nnunet_env)
    assert "ok: nnU-Net finds the nnunet-mim trainers" in ok.stdout


FINETUNING_AUTOCAST_SCRIPT = """
import json, torch
from helpers import trainer_on_test_dataset
from nnunet_mim.variants import nnUNetTrainerMiMScratch_T_CPUsmoke
t = trainer_on_test_dataset(nnUNetTrainerMiMScratch_T_CPUsmoke, started=True)
computed_in = set()
t.network.decoder.seg_layers[-1].register_forward_hook(lambda m, i, o: computed_in.add(str(o.dtype)))
# nnU-Net's own train_step, as it runs on CUDA: the forward and the loss inside an autocast context
with torch.autocast("cpu", dtype=torch.bfloat16):
    losses = [float(t.train_step(next(t.dataloader_train))["loss"]) for _ in range(2)]
print(json.dumps({"losses": losses, "computed_in": sorted(computed_in),
                  "master_fp32": all(p.dtype == torch.float32 for p in t.network.parameters())}))
"""


def test_the_finetuning_trainers_step_runs_under_autocast_on_the_cpu(nnunet_env):
    """nnU-Net's train_step of the fine-tuning trainers (here scratch's, the same class) enters autocast on CUDA only;
    run under a bf16 autocast context on the CPU: the heads compute in bf16, losses finite, weights fp32."""
    printed = python_in_process(FINETUNING_AUTOCAST_SCRIPT, nnunet_env).stdout
    out = json.loads(printed.strip().splitlines()[-1])
    assert out["computed_in"] == ["torch.bfloat16"] and out["master_fp32"]
    assert all(0 < loss < 10 for loss in out["losses"]), out["losses"]


def crafted_copy(pretrained, tmp_path, **changes):
    """The real pre-training checkpoint plus a call that an unsafe load would run (it creates tmp_path/marker)."""
    import torch
    checkpoint = torch.load(pretrained, map_location="cpu", weights_only=False)
    checkpoint["nnunet_mim"]["payload"] = WritesAMarker(tmp_path / "marker")
    checkpoint.update(changes)
    path = str(tmp_path / "crafted.pth")
    torch.save(checkpoint, path)
    return path


def test_no_route_runs_a_crafted_files_code(nnunet_env, pretrained, tmp_path):
    """-pretrained_weights given to a pre-training trainer or to nnUNetTrainerStockCNN (nnU-Net's own loader read it
    unsafely), and --c on a crafted checkpoint_latest.pth (this project's checkpointing read it unsafely): all
    refused, nothing runs."""
    env = {k: v for k, v in nnunet_env.items() if k != "NNUNET_MIM_TRUST_CHECKPOINTS"}
    crafted = crafted_copy(pretrained, tmp_path)
    # a pre-training trainer, and nnU-Net's own trainer as this plugin offers it (its route for nnssl files)
    for trainer in ("nnUNetTrainerMAEPretrain_T_CPUsmoke", "nnUNetTrainerStockCNN_CPUsmoke"):
        result = train(env, trainer, "-pretrained_weights", crafted, check=False)
        assert result.returncode != 0 and "NNUNET_MIM_TRUST_CHECKPOINTS=1" in result.stderr, result.stderr[-2000:]
    continued = "nnUNetTrainerMiMPretrain_T_CPUdemo"
    os.makedirs(output_folder(nnunet_env, continued))
    crafted_latest = crafted_copy(pretrained, tmp_path, trainer_name=continued)
    shutil.copy(crafted_latest, os.path.join(output_folder(nnunet_env, continued), "checkpoint_latest.pth"))
    result = train(env, continued, "--c", check=False)
    assert result.returncode != 0 and "NNUNET_MIM_TRUST_CHECKPOINTS=1" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "marker").exists()


# the fine-tuning trainer's inspection reads -pretrained_weights; then the file is replaced by a crafted one before
# nnU-Net's load: the load must take the checkpoint that was checked, not read the file again
SWAPPED_AFTER_THE_CHECK = """
import json, shutil, sys, torch
from nnunetv2.run.run_training import run_training_entry
from nnunet_mim.variants import nnUNetTrainerMiMFinetune_T_CPUdemo as Trainer
checked = torch.load(PATH, map_location="cpu", weights_only=False)["network_weights"]
inspect = Trainer.initialize
def initialize(self):
    inspect(self)
    shutil.copy(CRAFTED, PATH)
Trainer.initialize = initialize
loaded = {}
Trainer.run_training = lambda self: loaded.update(self.network.state_dict())
Trainer.perform_actual_validation = lambda self, *args: None
sys.argv = ["nnUNetv2_train", "991", "3d_fullres", "all", "-tr", "nnUNetTrainerMiMFinetune_T_CPUdemo", "-device",
            "cpu", "-pretrained_weights", PATH]
run_training_entry()
key = "encoder.stages.0.blocks.0.dw.weight"
print(json.dumps({"loaded_the_checked": torch.equal(loaded[key], checked[key])}))
"""


def test_the_fine_tuning_trainer_loads_the_checkpoint_it_checked(nnunet_env, pretrained, tmp_path):
    import torch
    path = str(tmp_path / "weights.pth")
    shutil.copy(pretrained, path)
    crafted = crafted_copy(pretrained, tmp_path)
    checkpoint = torch.load(crafted, map_location="cpu", weights_only=False)  # runs its payload: remove the marker
    os.remove(tmp_path / "marker")
    del checkpoint
    env = {k: v for k, v in nnunet_env.items() if k != "NNUNET_MIM_TRUST_CHECKPOINTS"}
    script = f"PATH, CRAFTED = {path!r}, {crafted!r}\n" + SWAPPED_AFTER_THE_CHECK
    out = json.loads(python_in_process(script, env).stdout.strip().splitlines()[-1])
    assert out["loaded_the_checked"] and not (tmp_path / "marker").exists()


@pytest.mark.parametrize("poison, message", [("nan", "holds 1 NaN or infinite values"),
                                             ("int", "is stored as int64")])
def test_poisoned_weights_are_refused_by_name_before_training(nnunet_env, pretrained, tmp_path, poison, message):
    import torch
    checkpoint = torch.load(pretrained, map_location="cpu", weights_only=False)
    key = "encoder.stages.0.blocks.0.dw.weight"
    weights = checkpoint["network_weights"]
    if poison == "nan":
        weights[key].view(-1)[0] = float("nan")
    else:
        weights[key] = weights[key].round().to(torch.int64)
    path = str(tmp_path / "poisoned.pth")
    torch.save(checkpoint, path)
    result = train(nnunet_env, "nnUNetTrainerMiMFinetune_T_CPUdemo", "-pretrained_weights", path, check=False)
    assert result.returncode != 0 and f"{key} {message}" in result.stderr, result.stderr[-2000:]
    assert not os.path.exists(os.path.join(output_folder(nnunet_env, "nnUNetTrainerMiMFinetune_T_CPUdemo"),
                                           "checkpoint_final.pth"))


DIVERGED = """
import numpy as np
from helpers import trainer_on_test_dataset
from nnunet_mim.variants import nnUNetTrainerMiMScratch_T_CPUsmoke
t = trainer_on_test_dataset(nnUNetTrainerMiMScratch_T_CPUsmoke)
t.initialize()
t.on_train_epoch_end([{"loss": np.array(float("nan"))}] * 3)
"""


def test_a_fine_tuning_epoch_of_non_finite_losses_stops_the_run(nnunet_env):
    result = python_in_process(DIVERGED, nnunet_env, check=False)
    assert result.returncode != 0 and "fine-tuning diverged: the training loss of epoch 0 was not finite" in \
        result.stderr


def test_the_pretraining_health_reads_the_runs_own_curves(pretrained):
    from nnunet_mim.checkpointing import read_checkpoint
    from nnunet_mim.pretraining.health import health_lines
    logged = read_checkpoint(pretrained)["logging"]
    falls, monitors = health_lines(pretrained)
    first, last = logged["train_rec_l2"][0], logged["train_rec_l2"][-1]
    assert f"L2 {first:.3f} -> {last:.3f}" in falls and falls.count(" -> ") == 3
    value = logged["train_feature_std"][-1]
    state = "above" if value >= 0.02 else "BELOW (collapsed)"
    assert f"feature_std {value:.3f}, {state} its threshold 0.02" in monitors
