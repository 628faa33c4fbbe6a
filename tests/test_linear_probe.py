"""benchmarks/linear_probe.py: a logistic regression on frozen encoder features, per fold."""
import csv
import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

from conftest import run

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "linear_probe.py")


def linear_probe_module():
    spec = importlib.util.spec_from_file_location("linear_probe", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_probe_reads_classes_that_features_hold_linearly_and_not_from_noise():
    probe = linear_probe_module()
    rng = np.random.default_rng(0)

    def voxels(n):
        labels = rng.integers(0, 3, n)
        informative = np.eye(3)[labels] + rng.normal(0, 0.3, (n, 3))  # one-hot class plus noise
        noise = rng.normal(0, 1, (n, 3))
        return torch.tensor(informative, dtype=torch.float32), torch.tensor(noise, dtype=torch.float32), labels
    train_informative, train_noise, train_labels = voxels(3000)
    test_informative, test_noise, test_labels = voxels(3000)
    targets = torch.from_numpy(train_labels)
    readable = probe.LinearProbe.fit(train_informative, targets, 3).predict(test_informative).numpy()
    unreadable = probe.LinearProbe.fit(train_noise, targets, 3).predict(test_noise).numpy()
    assert probe.dice_per_class(readable, test_labels, [1, 2]).min() > 0.95
    assert probe.dice_per_class(unreadable, test_labels, [1, 2]).max() < 0.5
    # a class in neither prediction nor target has no Dice, as in nnU-Net's summary
    assert np.isnan(probe.dice_per_class(np.zeros(4), np.zeros(4), [1])[0])


def save_encoder_checkpoint(path, input_channels=1):
    """A pre-training checkpoint whose encoder is the probe's random encoder of seed 1 on Dataset991
    (background and two classes)."""
    from nnunet_mim.architecture.network import MiMHybridUNet
    from nnunet_mim.architecture.presets import preset_kwargs
    from nnunet_mim.pretraining_record import PretrainingRecord
    torch.manual_seed(1)
    network = MiMHybridUNet(input_channels, 3, **preset_kwargs("T"))
    network.pretraining_record.copy_(PretrainingRecord("MAE", "T", True, input_channels, (32, 32, 32),
                                                       (5.0, 5.0, 5.0), 1).to_tensor())
    torch.save({"network_weights": network.state_dict()}, path)


def test_a_checkpoint_of_a_random_encoder_scores_as_that_encoder(nnunet_env, tmp_path):
    """End to end on a preprocessed nnU-Net dataset: the checkpoint's encoder is what gets probed
    (a checkpoint holding the random encoder of seed 1 scores exactly as that encoder, not as the
    reference of seed 0), "{fold}" names one file per fold, and both tables list every arm and fold."""
    for fold in (1, 3):
        save_encoder_checkpoint(tmp_path / f"encoder_fold_{fold}.pth")
    out = tmp_path / "probe"
    run([sys.executable, SCRIPT, "991", "--encoders", f"same={tmp_path}/encoder_fold_{{fold}}.pth",
         "--random-seeds", "0", "1", "--fraction", "0.5", "--folds", "1", "3", "-o", str(out)], nnunet_env)
    for feature_set in ("all", "tokens"):
        with open(out / f"linear_probe_{feature_set}_runs.csv") as f:
            rows = list(csv.DictReader(f))
        dice = {(r["arm"], r["fold"], r["class"]): float(r["dice"]) for r in rows}
        assert {arm for arm, _, _ in dice} == {"random", "random seed 1", "same"}
        assert {fold for _, fold, _ in dice} == {"1", "3"}
        same = {key[1:]: value for key, value in dice.items() if key[0] == "same"}
        assert same == {key[1:]: value for key, value in dice.items() if key[0] == "random seed 1"}
        assert same != {key[1:]: value for key, value in dice.items() if key[0] == "random"}
        table = open(out / f"linear_probe_{feature_set}.md").read()
        # in the main table, and against the mean of the two random encoders under it
        assert table.count("| 50% | mean | same | 2 |") == 2 and "Mean Dice against mean of 2 random encoders" in table
        # "same" is random seed 1: above seed 0 or not, never above itself
        above_seed_0 = sum(dice["same", f, "mean"] - dice["random", f, "mean"] for f in ("1", "3")) > 0
        assert f"above {int(above_seed_0)} of the 2 random encoders" in table
    assert {r["encoder"] for r in rows if r["arm"] == "same"} == {f"{tmp_path}/encoder_fold_{k}.pth" for k in (1, 3)}


SCRATCH_ENCODER_SCRIPT = """
import sys, torch
from nnunetv2.run.run_training import get_trainer_from_args
trainer = get_trainer_from_args("991", "3d_fullres", 0, "nnUNetTrainerMiMScratch_T_CPUsmoke",
                                device=torch.device("cpu"))
trainer.initialize()
torch.save(trainer.network.encoder.state_dict(), sys.argv[1])
"""


@pytest.mark.parametrize("seed", [0, 8])
def test_each_random_encoder_is_the_one_the_scratch_arm_starts_from_at_that_seed(nnunet_env, tmp_path, seed):
    """Seed N is the benchmark's scratch network as its trainer builds it under NNUNET_MIM_SEED=N
    (--init-seed N), tensor for tensor: the probe's reference (seed 0) is the random encoder of the
    frozen-encoder probe's scratch arm."""
    run([sys.executable, "-c", SCRATCH_ENCODER_SCRIPT, str(tmp_path / "scratch.pth")],
        dict(nnunet_env, NNUNET_MIM_SEED=str(seed)))
    scratch = torch.load(tmp_path / "scratch.pth")
    reference = linear_probe_module().random_encoder("T", 1, 3, seed=seed).state_dict()
    assert list(scratch) == list(reference)
    assert [k for k in reference if not torch.equal(reference[k], scratch[k])] == []


def test_a_checkpoint_that_cannot_be_probed_says_why(tmp_path):
    probe = linear_probe_module()
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    save_encoder_checkpoint(tmp_path / "two_channels.pth", input_channels=2)
    torch.save({"network_weights": {"encoder.stem.0.weight": torch.zeros(1)}}, tmp_path / "not_pretrained.pth")
    for name, message in (("corrupt.pth", "cannot read the pre-trained checkpoint"),
                          ("two_channels.pth", "takes 2 input channel"),
                          ("not_pretrained.pth", "not an nnunet-mim pre-training checkpoint")):
        with pytest.raises(SystemExit, match=message):
            probe.checkpoint_encoder(str(tmp_path / name), input_channels=1)
    encoder, preset = probe.checkpoint_encoder(str(tmp_path / "two_channels.pth"), input_channels=2)
    assert preset == "T" and encoder.stem[0].in_channels == 2


def test_cases_whose_features_would_not_fit_in_memory_are_refused_before_encoding(monkeypatch):
    probe = linear_probe_module()
    data = probe.ProbeDataset("Dataset001_X", [1], {"1": "a"}, [], {"big": np.zeros((1, 32, 32, 32), np.float32)}, {})
    encoder = probe.random_encoder("T", 1, 2, seed=0)
    probe.check_feature_memory(data, encoder)  # 104 channels x 32^3 voxels x 4 bytes = 13.6 MB
    monkeypatch.setattr(probe, "MAX_FEATURE_BYTES", 10 * 2 ** 20)
    with pytest.raises(SystemExit, match="big .32x32x32 voxels. would need 0.0 GiB"):
        probe.check_feature_memory(data, encoder)
