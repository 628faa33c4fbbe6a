"""benchmarks/linear_probe.py: a logistic regression on frozen encoder features, per fold."""
import csv
import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

from helpers import python_in_process, run

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


@pytest.mark.slow  # a benchmark script's run on a planned dataset (its fit is tested above on synthetic features)
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
        assert {arm for arm, _, _ in dice} == {"random", "random seed 1", "same", "same shuffled",
                                               "position+intensity"}
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
    # the controls: "same" is a random encoder, so it is not above both, and the notes say so
    assert "- same: " in table and "NOT above both" in table


def test_the_controls_learn_nothing_and_keep_what_they_claim():
    """The shuffled encoder keeps every tensor's values (sorted, they are equal) in another order; the position
    control's features are the voxel's coordinates, their squares and products, and the intensity."""
    probe = linear_probe_module()
    encoder = probe.random_encoder("T", 1, 3, seed=0)
    shuffled = probe.shuffled(encoder, seed=0).state_dict()
    for key, tensor in encoder.state_dict().items():
        assert torch.equal(tensor.flatten().sort().values, shuffled[key].flatten().sort().values), key
    moved = [key for key, tensor in encoder.state_dict().items() if tensor.numel() > 8 and
             not torch.equal(tensor, shuffled[key])]
    assert len(moved) > 10
    image = np.random.default_rng(0).normal(size=(1, 3, 4, 5)).astype(np.float32)
    [(region, features)] = probe.position_intensity_features(image)
    assert features.shape == (60, 10) and region == (slice(0, 3), slice(0, 4), slice(0, 5))
    z, y, x = features[:, 0], features[:, 1], features[:, 2]
    assert torch.equal(features[:, 3], z * z) and torch.equal(features[:, 8], y * x)
    assert torch.equal(features[:, 9], torch.from_numpy(image[0]).flatten())
    assert z.min() == -1 and z.max() == 1


@pytest.mark.slow  # its windows are tested below without a dataset; this runs the script on one
def test_the_sliding_window_probe_encodes_in_windows_of_the_network_patch(nnunet_env, tmp_path):
    """End to end: --sliding-window takes the plan's patch rounded down to the token size (what the
    fine-tuned network sees) and says so in every table."""
    import json
    with open(os.path.join(nnunet_env["nnUNet_preprocessed"], "Dataset991_E2E", "nnUNetPlans.json")) as f:
        planned = json.load(f)["configurations"]["3d_fullres"]["patch_size"]
    window = "x".join(str(max(16, p // 16 * 16)) for p in planned)
    out = tmp_path / "probe"
    run([sys.executable, SCRIPT, "991", "--sliding-window", "--fraction", "0.5", "--folds", "1", "-o", str(out)],
        nnunet_env)
    for feature_set in ("all", "tokens"):
        assert f"windows of {window};" in (out / f"linear_probe_{feature_set}.md").read_text()
        with open(out / f"linear_probe_{feature_set}_runs.csv") as f:
            rows = list(csv.DictReader(f))
        assert {(r["arm"], r["fold"]) for r in rows} == {("random", "1"), ("position+intensity", "1")}
        assert len(rows) == 6  # 2 classes + mean, each


SCRATCH_ENCODER_SCRIPT = """
import torch
from nnunetv2.run.run_training import get_trainer_from_args
trainer = get_trainer_from_args("991", "3d_fullres", 0, "nnUNetTrainerMiMScratch_T_CPUsmoke",
                                device=torch.device("cpu"))
trainer.initialize()
torch.save(trainer.network.encoder.state_dict(), OUT)
"""


@pytest.mark.parametrize("seed", [0, 8])
def test_each_random_encoder_is_the_one_the_scratch_arm_starts_from_at_that_seed(nnunet_env, tmp_path, seed):
    """Seed N is the benchmark's scratch network as its trainer builds it under NNUNET_MIM_SEED=N
    (--init-seed N), tensor for tensor: the probe's reference (seed 0) is the random encoder of the
    frozen-encoder probe's scratch arm."""
    python_in_process(f"OUT = {str(tmp_path / 'scratch.pth')!r}\n" + SCRATCH_ENCODER_SCRIPT,
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
    data = probe.ProbeDataset("Dataset001_X", [1], {"1": "a"}, [], {"big": np.zeros((1, 32, 32, 32), np.float32)}, {},
                              [16, 16, 16])
    features = probe.encoder_featurizer(probe.random_encoder("T", 1, 2, seed=0))
    probe.check_feature_memory(data, features, sliding_window=False)  # 104 channels x 32^3 voxels x 4 bytes = 13.6 MB
    monkeypatch.setattr(probe, "MAX_FEATURE_BYTES", 10 * 2 ** 20)
    with pytest.raises(SystemExit, match="big .32x32x32 voxels. would need 0.0 GiB.*--sliding-window"):
        probe.check_feature_memory(data, features, sliding_window=False)
    probe.check_feature_memory(data, features, sliding_window=True)  # windows of 16^3: 1.7 MB


def test_windows_cover_every_voxel_once_and_each_region_is_its_window_encoded_alone():
    """--sliding-window: the regions tile the case (a case smaller than the window on an axis is
    padded, a larger one gets a last window that ends at the border), and a region's features are
    those of the first window holding it, encoded as a case of its own."""
    probe = linear_probe_module()
    encoder = probe.random_encoder("T", 1, 2, seed=0)
    image = torch.randn(1, 20, 70, 33, generator=torch.Generator().manual_seed(0)).numpy()
    window = [32, 32, 32]
    regions = list(probe.region_features(encoder, image, window))
    covered = np.zeros(image.shape[1:], int)
    for region, _ in regions:
        covered[region] += 1
    assert (covered == 1).all()
    features_of = {tuple((r.start, r.stop) for r in region): features for region, features in regions}
    assert len(regions) == 1 * 3 * 2  # z: 20 < 32, padded; y: 0, 32, 38 (ends at 70); x: 0, 1 (ends at 33)

    def alone(crop):  # the whole-case features of a crop, as (Z, Y, X, channels)
        [(_, features)] = probe.region_features(encoder, image[(slice(None), *crop)])
        return features.reshape(*image[(0, *crop)].shape, -1)
    # the last window along y starts at 38 but owns only y 64..69 (32..63 belong to the window before)
    last_y = ((0, 20), (64, 70), (0, 32))
    padded_z = np.pad(image, [(0, 0), (6, 6), (0, 0), (0, 0)])  # z padded to the window, centred
    [(_, features)] = probe.region_features(encoder, padded_z[:, :, 38:70, 0:32])
    expected = features.reshape(32, 32, 32, -1)[6:26, 26:32]
    assert torch.allclose(features_of[last_y].reshape(20, 6, 32, -1), expected, atol=1e-5)
    # a case exactly one window large: windows and the whole case agree
    cube = (slice(0, 16), slice(0, 32), slice(0, 32))
    [(_, features)] = probe.region_features(encoder, image[(slice(None), *cube)], [16, 32, 32])
    assert torch.equal(features.reshape(16, 32, 32, -1), alone(cube))


def test_the_fit_keeps_a_share_of_the_labelled_voxels_when_they_would_not_fit(monkeypatch):
    probe = linear_probe_module()
    rng = np.random.default_rng(0)
    images = {c: rng.normal(size=(1, 16, 16, 16)).astype(np.float32) for c in ("a", "b")}
    segmentations = {c: rng.integers(0, 3, (16, 16, 16)) for c in ("a", "b")}
    segmentations["a"][0] = -1  # outside the normalisation mask: never learnt
    data = probe.ProbeDataset("Dataset001_X", [1, 2], {"1": "x", "2": "y"}, [], images, segmentations, [16, 16, 16])
    encoder = probe.random_encoder("T", 1, 3, seed=0)
    fitted = []
    fit = probe.LinearProbe.fit
    monkeypatch.setattr(probe.LinearProbe, "fit", lambda x, y, n: fitted.append(len(y)) or fit(x, y, n))
    split = {"train": ["a"], "val": ["b"]}
    dice = probe.probe_fold(probe.encoder_featurizer(encoder), data, split)
    assert fitted == [15 * 16 * 16] * 2 and set(dice) == {"all", "tokens"}  # every known voxel, both feature sets
    monkeypatch.setattr(probe, "MAX_FIT_BYTES", 4 * 104 * 1000)  # room for 1000 voxels of 104 channels
    fitted.clear()
    probe.probe_fold(probe.encoder_featurizer(encoder), data, split)
    assert 800 < fitted[0] < 1200 and fitted[0] == fitted[1]
