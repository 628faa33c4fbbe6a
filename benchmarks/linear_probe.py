"""Do an encoder's frozen features tell the classes apart? A linear probe.

`nnunet-mim benchmark --schedule frozen-encoder` reads a frozen encoder through a whole U-Net
decoder with skip connections and a trained full-resolution stem, which make much of even a random
encoder's features (docs/benchmarks.md). A linear classifier asks more of them. Every case goes
through each encoder whole (zero-padded, centred, to a multiple of 16); the outputs of the three
conv stages and of the transformer are upsampled (trilinear) to the voxel grid and stacked, one
feature vector per voxel. Per fold, a multinomial logistic regression (background and every class)
is fitted on every voxel of the fold's labelled cases and labels every voxel of its validation
cases. Score: Dice per class in the preprocessed grid, averaged over the validation cases (as
nnU-Net's summary averages), and their mean over classes. The labelled cases are the benchmark's
(same --fraction and --seed), so each fold pairs with the same fold of a benchmark run. It takes
minutes on a CPU: a cheap first look at a pre-training before fine-tuning runs are spent on it.

    python benchmarks/linear_probe.py DATASET --encoders MAE=MAE.pth MiM=MiM.pth \\
        supervised=W/probe_control/supervised_encoder_fold_{fold}.pth --fraction 0.1 --seed 0 -o OUT

An encoder is an nnunet-mim pre-training checkpoint (or one that `adapt-checkpoint --encoder-from`
wrote); "{fold}" in a path names one file per fold. The reference is a random encoder of the same
preset (torch seed 0: the encoder the benchmark's scratch arm starts from); --random-seeds adds
others, to show how much random encoders differ: with more than one, each table also compares every
arm with their mean and says how many of them it is above. Two feature sets, one table each: every
encoder output ("all") and the transformer's tokens alone ("tokens"). The full-resolution stem is
left out: no pre-training trains it. Writes linear_probe_all.* and linear_probe_tokens.* (Markdown,
CSV, chart) into OUT and prints the tables.
"""
import argparse
import functools
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_mim.architecture.encoder import TOKEN_SIZE, HybridEncoder
from nnunet_mim.architecture.network import MiMHybridUNet
from nnunet_mim.architecture.presets import preset_kwargs
from nnunet_mim.benchmark import (BenchmarkError, class_names, cross_validation_splits, label_fraction_splits,
                                  mean_dice_against, paragraphs, preprocessed_data_folder, write_outputs)
from nnunet_mim.finetuning.checkpoint import load_checkpoint
from nnunet_mim.pretraining_record import PretrainingRecord

# which of HybridEncoder.forward's outputs each feature set stacks (output 0 is the stem)
FEATURE_SETS = {"all": slice(1, None), "tokens": slice(-1, None)}
WEIGHT_DECAY, ITERATIONS = 1e-4, 200  # chosen before the first run (docs/benchmarks.md), not tuned
MAX_FEATURE_BYTES = 4 * 2 ** 30  # of one case's stacked features
REFERENCE = "random"


def random_encoder(preset: str, input_channels: int, segmentation_heads: int, seed: int) -> HybridEncoder:
    """The encoder of a freshly built network with the dataset's segmentation heads, seeded. Seed 0 is
    the encoder the benchmark's scratch arm starts from: its trainer seeds torch with 0 before building
    the same network, and the decoder's initialisation, whose draws depend on the number of heads, comes
    before the transformer's."""
    torch.manual_seed(seed)
    return MiMHybridUNet(input_channels, segmentation_heads, **preset_kwargs(preset)).encoder


def checkpoint_encoder(path: str, input_channels: int) -> Tuple[HybridEncoder, str]:
    """The encoder of an nnunet-mim checkpoint and its preset; a message that says what is wrong otherwise."""
    try:
        weights = load_checkpoint(path)["network_weights"]
    except RuntimeError as error:  # unreadable, or not an nnU-Net checkpoint: the message says which
        raise SystemExit(str(error)) from error
    record = PretrainingRecord.from_tensor(weights["pretraining_record"]) if "pretraining_record" in weights else None
    if record is None:
        raise SystemExit(f"{path} is not an nnunet-mim pre-training checkpoint (its network has no pretraining record)")
    if record.input_channels != input_channels:
        raise SystemExit(f"{path} takes {record.input_channels} input channel(s), the dataset has {input_channels} "
                         "(nnunet-mim adapt-checkpoint --input-channels makes one that fits)")
    encoder = MiMHybridUNet(input_channels, 2, **preset_kwargs(record.preset)).encoder
    try:
        encoder.load_state_dict({k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")})
    except RuntimeError as error:  # strict: every encoder tensor present, with its shape
        raise SystemExit(f"{path}: its encoder does not fit a preset-{record.preset} encoder: {error}") from error
    return encoder, record.preset


@torch.no_grad()
def voxel_features(encoder: HybridEncoder, image: np.ndarray) -> List[torch.Tensor]:
    """(C, Z, Y, X) image -> every encoder output, each upsampled to (channels, Z, Y, X)."""
    shape = image.shape[1:]
    pad = [(-s) % TOKEN_SIZE for s in shape]
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    x = F.pad(x, [p for axis in reversed(pad) for p in (axis // 2, axis - axis // 2)])  # F.pad: last axis first
    inside = (slice(None), *(slice(p // 2, p // 2 + s) for p, s in zip(pad, shape)))
    return [F.interpolate(o, size=x.shape[2:], mode="trilinear", align_corners=False)[0][inside]
            for o in encoder.eval()(x)]


@dataclass
class LinearProbe:
    """Multinomial logistic regression on per-channel standardised features."""
    mean: torch.Tensor
    sd: torch.Tensor
    linear: torch.nn.Linear

    @classmethod
    def fit(cls, features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> "LinearProbe":
        """(N, C) features, (N,) labels; full-batch L-BFGS from zero weights (the loss is convex, the fit
        deterministic), L2 penalty on the weights."""
        mean, sd = features.mean(0), features.std(0).clamp_min(1e-6)
        x = (features - mean) / sd
        linear = torch.nn.Linear(x.shape[1], num_classes)
        torch.nn.init.zeros_(linear.weight)
        torch.nn.init.zeros_(linear.bias)
        optimizer = torch.optim.LBFGS(linear.parameters(), max_iter=ITERATIONS, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(linear(x), labels) + WEIGHT_DECAY * linear.weight.square().sum()
            loss.backward()
            return loss
        optimizer.step(closure)
        return cls(mean, sd, linear)

    @torch.no_grad()
    def predict(self, features: torch.Tensor) -> torch.Tensor:
        return self.linear((features - self.mean) / self.sd).argmax(1)


def dice_per_class(prediction: np.ndarray, target: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Dice of each class value, counted as nnU-Net's evaluation counts it (nan where a class is in
    neither)."""
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn
    dice = []
    for value in classes:
        tp, fp, fn, _ = compute_tp_fp_fn_tn(target == value, prediction == value)
        dice.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else np.nan)
    return np.array(dice)


def stacked(features: List[torch.Tensor], feature_set: str) -> torch.Tensor:
    """One case's upsampled encoder outputs -> (voxels, channels) of the feature set."""
    chosen = torch.cat(features[FEATURE_SETS[feature_set]])
    return chosen.flatten(1).T


def probe_fold(features: Dict[str, List[torch.Tensor]], segmentations: Dict[str, np.ndarray], split: dict,
               classes: Sequence[int], feature_set: str) -> np.ndarray:
    """Fit on the split's labelled cases, label its validation cases: Dice per class, mean over cases.
    Voxels of no class (nnU-Net's -1 outside a normalisation mask, an ignore label) are neither
    learnt nor scored."""
    def voxels(case):
        labels = torch.from_numpy(segmentations[case].ravel().astype(np.int64))
        known = (labels == 0) | torch.isin(labels, torch.tensor(list(classes)))
        return stacked(features[case], feature_set)[known], labels[known]
    train = [voxels(case) for case in split["train"]]
    probe = LinearProbe.fit(torch.cat([f for f, _ in train]), torch.cat([t for _, t in train]), max(classes) + 1)
    scores = []
    for case in split["val"]:
        x, target = voxels(case)
        scores.append(dice_per_class(probe.predict(x).numpy(), target.numpy(), classes))
    return np.nanmean(np.stack(scores), axis=0)


def against_random_encoders(rows: List[dict], random_arms: Sequence[str]) -> List[str]:
    """Markdown lines for under the table when several random encoders were probed: random encoders
    differ among themselves, so every other arm against their mean (paired over folds) and against
    each of them (how many it is above, by mean Dice over the folds)."""
    mean_arm = f"mean of {len(random_arms)} random encoders"
    by_run = {}
    for row in rows:
        if row["arm"] in random_arms:
            by_run.setdefault((row["fold"], row["class"]), []).append(row)
    averaged = [dict(group[0], arm=mean_arm, encoder=mean_arm, dice=float(np.mean([r["dice"] for r in group])))
                for group in by_run.values()]
    others = [row for row in rows if row["arm"] not in random_arms]

    def fold_mean(arm):
        return np.mean([r["dice"] for r in rows if r["arm"] == arm and r["class"] == "mean"])
    random_means = [fold_mean(arm) for arm in random_arms]
    ranks = [f"- {arm}: {fold_mean(arm):.3f}, above {sum(fold_mean(arm) > m for m in random_means)} of the "
             f"{len(random_arms)} random encoders ({min(random_means):.3f} to {max(random_means):.3f})"
             for arm in dict.fromkeys(r["arm"] for r in others)]
    return paragraphs(mean_dice_against(averaged + others, mean_arm), ["Mean Dice over the folds:"] + ranks)


def parse_encoders(specs: Sequence[str]) -> Dict[str, str]:
    encoders = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"--encoders takes NAME=CHECKPOINT, got {spec!r}")
        if name == REFERENCE or name.startswith(REFERENCE + " "):
            raise SystemExit(f"{name!r} names the random reference encoder: call the checkpoint something else")
        encoders[name] = path
    return encoders


@dataclass
class ProbeDataset:
    """The preprocessed cases of the folds to probe, as nnU-Net's trainers read them."""
    name: str
    classes: List[int]             # label values, background and an ignore label left out
    class_names: Dict[str, str]    # label value (as nnU-Net's summary keys it) -> name
    splits: List[dict]             # per fold: the labelled training cases and the validation cases
    images: Dict[str, np.ndarray]  # case -> (C, Z, Y, X), normalised
    segmentations: Dict[str, np.ndarray]

    @classmethod
    def load(cls, dataset: str, plans_name: str, configuration: str, fraction: float, seed: int,
             folds: Sequence[int]) -> "ProbeDataset":
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
        if "nnUNet_preprocessed" not in os.environ:
            raise SystemExit("nnUNet_preprocessed is not set: the probe reads the preprocessed dataset")
        try:
            name = maybe_convert_to_dataset_name(dataset)
        except RuntimeError as error:
            raise SystemExit(str(error)) from error
        source = os.path.join(os.environ["nnUNet_preprocessed"], name)
        try:
            data_folder = preprocessed_data_folder(name, plans_name, configuration)
        except BenchmarkError as error:
            raise SystemExit(str(error)) from error
        labels = load_json(os.path.join(source, "dataset.json"))["labels"]
        if any(isinstance(value, list) for value in labels.values()):
            raise SystemExit("region-based labels are not supported: the probe puts each voxel in one class")
        splits = label_fraction_splits(cross_validation_splits(source, data_folder), fraction, seed)
        if not all(0 <= fold < len(splits) for fold in folds):
            raise SystemExit(f"folds {list(folds)}: {name} has folds 0-{len(splits) - 1}")
        reader = infer_dataset_class(data_folder)(data_folder)
        images, segmentations = {}, {}
        for case in sorted({case for fold in folds for part in ("train", "val") for case in splits[fold][part]}):
            image, segmentation, _, _ = reader.load_case(case)
            images[case], segmentations[case] = np.asarray(image), np.asarray(segmentation)[0]
        classes = sorted(value for label, value in labels.items() if value != 0 and label != "ignore")
        return cls(name, classes, class_names(labels), splits, images, segmentations)

    @property
    def input_channels(self) -> int:
        return next(iter(self.images.values())).shape[0]


def check_feature_memory(data: ProbeDataset, encoder: HybridEncoder) -> None:
    """Whole cases go through the encoder and every voxel gets a feature vector: refuse, saying why,
    cases whose features alone would take more than MAX_FEATURE_BYTES (a CT at full resolution)."""
    channels = sum(encoder.output_channels[FEATURE_SETS["all"]])
    case, shape = max(((case, image.shape[1:]) for case, image in data.images.items()), key=lambda c: np.prod(c[1]))
    needed = 4 * channels * int(np.prod(shape))
    if needed > MAX_FEATURE_BYTES:
        raise SystemExit(f"{case} ({'x'.join(map(str, shape))} voxels) would need {needed / 2 ** 30:.1f} GiB of "
                         f"features: the linear probe encodes whole cases, made for small grids such as the "
                         f"example datasets'; probe a coarser configuration (-c 3d_lowres) or a resampled dataset")


def probe_arms(arms: Dict[str, Callable[[int], Tuple[str, HybridEncoder]]], data: ProbeDataset,
               folds: Sequence[int], fraction: float) -> Dict[str, List[dict]]:
    """Per feature set, one row per arm, fold and class and one for the mean over classes. ``arms``:
    arm -> (fold -> what the encoder is, the encoder)."""
    from tqdm import tqdm
    rows: Dict[str, List[dict]] = {feature_set: [] for feature_set in FEATURE_SETS}
    progress = tqdm(total=len(arms) * len(folds), desc="linear probe", unit="fold")
    for arm, encoder_for in arms.items():
        features: Dict[tuple, List[torch.Tensor]] = {}  # (encoder, case) -> upsampled outputs, for every fold
        for fold in folds:
            source, encoder = encoder_for(fold)
            split = data.splits[fold]
            for case in split["train"] + split["val"]:
                if (source, case) not in features:
                    features[source, case] = voxel_features(encoder, data.images[case])
            fold_features = {case: features[source, case] for case in split["train"] + split["val"]}
            run = {"arm": arm, "fraction": fraction, "fold": fold, "encoder": source}
            for feature_set, feature_rows in rows.items():
                dice = probe_fold(fold_features, data.segmentations, split, data.classes, feature_set)
                feature_rows += [dict(run, **{"class": data.class_names[str(value)], "label": str(value),
                                              "dice": float(d)}) for value, d in zip(data.classes, dice)]
                feature_rows.append(dict(run, **{"class": "mean", "label": "", "dice": float(np.nanmean(dice))}))
            progress.update()
    progress.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="nnU-Net dataset ID or name, planned and preprocessed")
    parser.add_argument("--encoders", nargs="*", default=[], metavar="NAME=CHECKPOINT",
                        help='pre-training checkpoints to probe; "{fold}" in a path names one file per fold')
    parser.add_argument("--random-seeds", type=int, nargs="+", default=[0],
                        help="random encoders; the first is the reference (default: 0)")
    parser.add_argument("--preset", default=None, help="of the random encoders (default: the checkpoints')")
    parser.add_argument("-c", "--configuration", default="3d_fullres")
    parser.add_argument("-p", "--plans", default="nnUNetPlans")
    parser.add_argument("--fraction", type=float, default=0.1, help="labelled share of each fold's training cases")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--seed", type=int, default=0, help="label draw, as nnunet-mim benchmark --seed")
    parser.add_argument("-o", "--output-folder", default="linear_probe")
    args = parser.parse_args()
    checkpoints = parse_encoders(args.encoders)
    data = ProbeDataset.load(args.dataset, args.plans, args.configuration, args.fraction, args.seed, args.folds)

    loaded: Dict[str, Tuple[HybridEncoder, str]] = {}  # a checkpoint every fold shares loads once

    def from_checkpoint(path: str) -> HybridEncoder:
        if path not in loaded:
            loaded[path] = checkpoint_encoder(path, data.input_channels)
        return loaded[path][0]
    for path in checkpoints.values():  # fail on a bad checkpoint before minutes of probing
        from_checkpoint(path.format(fold=args.folds[0]))
    presets = {preset for _, preset in loaded.values()}
    if len(presets) > 1 and args.preset is None:
        raise SystemExit(f"the checkpoints hold encoders of presets {sorted(presets)}: name the random "
                         "encoders' preset with --preset")
    preset = args.preset or (presets.pop() if presets else "T")

    @functools.lru_cache(maxsize=None)  # one build per seed, shared by the folds
    def seeded(seed: int) -> HybridEncoder:
        return random_encoder(preset, data.input_channels, len(data.classes) + 1, seed)
    arms = {(REFERENCE if i == 0 else f"{REFERENCE} seed {seed}"):
            (lambda fold, seed=seed: (f"random, {preset}, seed {seed}", seeded(seed)))
            for i, seed in enumerate(args.random_seeds)}
    arms.update({name: (lambda fold, path=path: (path.format(fold=fold), from_checkpoint(path.format(fold=fold))))
                 for name, path in checkpoints.items()})
    check_feature_memory(data, arms[REFERENCE](args.folds[0])[1])
    random_arms = [arm for arm in arms if arm.startswith(REFERENCE)]
    for feature_set, rows in probe_arms(arms, data, args.folds, args.fraction).items():
        title = (f"Linear probe, {feature_set} encoder features: {data.name}, {args.fraction:.0%} labels "
                 f"(label draw {args.seed}), folds {args.folds}; logistic regression, L2 {WEIGHT_DECAY:g}, "
                 f"L-BFGS {ITERATIONS} iterations")
        notes = against_random_encoders(rows, random_arms) if len(random_arms) > 1 else []
        print(write_outputs(rows, args.output_folder, title, reference=REFERENCE, name=f"linear_probe_{feature_set}",
                            notes=notes))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
