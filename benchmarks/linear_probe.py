"""Do an encoder's frozen features tell the classes apart? A linear probe.

`nnunet-mim benchmark --schedule frozen-encoder` reads a frozen encoder through a whole U-Net
decoder with skip connections and a trained full-resolution stem, which make much of even a random
encoder's features (docs/benchmarks.md). A linear classifier asks more of them. Every case goes
through each encoder whole (zero-padded, centred, to a multiple of 16), or with --sliding-window
in windows of the network's patch (the plan's, rounded down to a multiple of 16, as fine-tuning
and nnU-Net's prediction see the image; for cases too large to encode whole); the outputs of the
three conv stages and of the transformer are upsampled (trilinear) to the voxel grid and stacked,
one feature vector per voxel. Per fold, a multinomial logistic regression (background and every
class) is fitted on every voxel of the fold's labelled cases (a random share of them, the same for
every class, where they would exceed MAX_FIT_BYTES of features) and labels every voxel of its
validation cases. Score: Dice per class in the preprocessed grid, averaged over the validation cases (as
nnU-Net's summary averages), and their mean over classes. The labelled cases are the benchmark's
(same --fraction and --seed), so each fold pairs with the same fold of a benchmark run. It takes
minutes on a CPU: a cheap first look at a pre-training before fine-tuning runs are spent on it.

    python benchmarks/linear_probe.py DATASET --encoders MAE=MAE.pth MiM=MiM.pth \\
        supervised=W/probe_control/supervised_encoder_fold_{fold}.pth --fraction 0.1 --seed 0 -o OUT

An encoder is an nnunet-mim pre-training checkpoint (or one that `adapt-checkpoint --encoder-from`
wrote); "{fold}" in a path names one file per fold. Two controls stand beside every encoder: a
probe on ten trivial features per voxel (its position in the case, their squares and products, and its
intensity: "position+intensity"), and each checkpoint's encoder with every tensor's entries shuffled
("NAME shuffled": the same weight statistics, no learnt structure). An encoder has learnt something the
probe can read only where it scores above both; the notes say so per encoder, and warn when position
alone reaches most of the best encoder's score (a dataset whose classes position decides). The reference
is a random encoder of the same
preset (torch seed 0: the encoder the benchmark's scratch arm starts from); --random-seeds adds
others, to show how much random encoders differ: with more than one, each table also compares every
arm with their mean and says how many of them it is above. Two feature sets, one table each: every
encoder output ("all") and the transformer's tokens alone ("tokens"). The full-resolution stem is
left out: no pre-training trains it. Writes linear_probe_all.* and linear_probe_tokens.* (Markdown,
CSV, chart) into OUT and prints the tables.
"""
import argparse
import functools
import itertools
import os
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from batchgenerators.utilities.file_and_folder_operations import load_json

from nnunet_mim.architecture.encoder import HybridEncoder
from nnunet_mim.geometry import TOKEN_SIZE
from nnunet_mim.architecture.network import MiMHybridUNet
from nnunet_mim.architecture.presets import preset_kwargs
from nnunet_mim.benchmark import (BenchmarkError, class_names, cross_validation_splits, label_fraction_splits,
                                  mean_dice_against, paragraphs, plans_file, preprocessed_data_folder, write_outputs)
from nnunet_mim.cli import name_and_value
from nnunet_mim.finetuning.checkpoint import load_checkpoint, pretraining_record_of
from nnunet_mim.plans import round_patch_size

WEIGHT_DECAY, ITERATIONS = 1e-4, 200  # chosen before the first run (docs/benchmarks.md), not tuned
MAX_FEATURE_BYTES = 4 * 2 ** 30  # of the stacked features of one forward (a whole case, or a window)
MAX_FIT_BYTES = 2 * 2 ** 30  # of the features one fold's probe is fitted on
REFERENCE = "random"
POSITION = "position+intensity"


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
        checkpoint = load_checkpoint(path)
        record = pretraining_record_of(path, checkpoint)
    except RuntimeError as error:  # unreadable, not an nnU-Net checkpoint, or not ours: the message says which
        raise SystemExit(str(error)) from error
    if record is None:
        raise SystemExit(f"{path} is not an nnunet-mim pre-training checkpoint (its pretraining record is empty: "
                         "a network never pre-trained)")
    weights = checkpoint["network_weights"]
    if record.input_channels != input_channels:
        raise SystemExit(f"{path} takes {record.input_channels} input channel(s), the dataset has {input_channels} "
                         "(nnunet-mim adapt-checkpoint --input-channels makes one that fits)")
    encoder = MiMHybridUNet(input_channels, 2, **preset_kwargs(record.preset)).encoder
    try:
        encoder.load_state_dict({k[len("encoder."):]: v for k, v in weights.items() if k.startswith("encoder.")})
    except RuntimeError as error:  # strict: every encoder tensor present, with its shape
        raise SystemExit(f"{path}: its encoder does not fit a preset-{record.preset} encoder: {error}") from error
    return encoder, record.preset


def window_starts(size: int, window: int) -> List[int]:
    """Starts of windows a window apart that cover 0..size; the last one ends at the border."""
    starts = list(range(0, size - window + 1, window))
    return starts if starts[-1] + window == size else starts + [size - window]


@torch.no_grad()
def region_features(encoder: HybridEncoder, image: np.ndarray,
                    window: Optional[Sequence[int]] = None) -> Iterator[Tuple[Tuple[slice, ...], torch.Tensor]]:
    """(C, Z, Y, X) image -> (region of the case, its features: (voxels, channels) of every encoder
    output but the stem, each upsampled to the voxels), region by region. ``window`` None: the
    whole case, zero-padded (centred) to a multiple of 16, in one forward and one region. Otherwise
    the case, zero-padded (centred) where smaller than the window, in windows that overlap only
    where the last along an axis must end at the border; every voxel is in one region, whose
    features come from the first window that holds it."""
    shape = image.shape[1:]
    padded = [s + (-s) % TOKEN_SIZE for s in shape] if window is None else [max(s, w) for s, w in zip(shape, window)]
    window = padded if window is None else list(window)
    before = [(p - s) // 2 for p, s in zip(padded, shape)]
    x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None]
    # F.pad takes the last axis first
    x = F.pad(x, [n for b, p, s in reversed(list(zip(before, padded, shape))) for n in (b, p - s - b)])
    per_axis = [list(enumerate(window_starts(p, w))) for p, w in zip(padded, window)]
    for position in itertools.product(*per_axis):
        # the i-th window along an axis owns i*w..(i+1)*w (the last one fewer), inside the case
        owned = [(max(i * w, b), min((i + 1) * w, b + s)) for (i, _), w, b, s in zip(position, window, before, shape)]
        if any(low >= high for low, high in owned):
            continue  # padding only
        starts = [start for _, start in position]
        outputs = encoder.eval()(x[(..., *(slice(a, a + w) for a, w in zip(starts, window)))])
        crop = (slice(None), *(slice(low - a, high - a) for (low, high), a in zip(owned, starts)))
        features = torch.cat([F.interpolate(o, size=window, mode="trilinear", align_corners=False)[0][crop]
                              for o in outputs[1:]])
        yield tuple(slice(low - b, high - b) for (low, high), b in zip(owned, before)), features.flatten(1).T


@dataclass
class Featurizer:
    """What the probe reads: (image, window) -> (region, its (voxels, channels) features) region by region,
    the feature sets as columns of those channels, and the float32 bytes per voxel."""
    regions: Callable[[np.ndarray, Optional[Sequence[int]]], Iterator[Tuple[Tuple[slice, ...], torch.Tensor]]]
    columns: Dict[str, slice]
    channels: int

    def bytes(self, voxels: int) -> int:
        return 4 * self.channels * voxels


def encoder_featurizer(encoder: HybridEncoder) -> Featurizer:
    """Every encoder output but the stem ("all"), and the transformer's tokens alone ("tokens")."""
    return Featurizer(functools.partial(region_features, encoder),
                      {"all": slice(None), "tokens": slice(-encoder.output_channels[-1], None)},
                      sum(encoder.output_channels[1:]))


def position_intensity_features(image: np.ndarray, window=None):
    """The control that learns nothing: each voxel's position in the case (in [-1, 1] per axis), the squares
    and pairwise products of those, and its intensity per channel, for the whole case in one region."""
    shape = image.shape[1:]
    z, y, x = torch.meshgrid(*[torch.linspace(-1, 1, s) for s in shape], indexing="ij")
    columns = [z, y, x, z * z, y * y, x * x, z * y, z * x, y * x,
               *torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))]
    yield tuple(slice(0, s) for s in shape), torch.stack([c.flatten() for c in columns], dim=1)


def position_featurizer(input_channels: int) -> Featurizer:
    return Featurizer(position_intensity_features, {"all": slice(None), "tokens": slice(None)}, 9 + input_channels)


def shuffled(encoder: HybridEncoder, seed: int) -> HybridEncoder:
    """A copy of ``encoder`` with every tensor's entries in a random order: its weights' statistics, none of
    their arrangement."""
    import copy
    generator = torch.Generator().manual_seed(seed)
    copied = copy.deepcopy(encoder)
    with torch.no_grad():
        for tensor in copied.state_dict().values():
            if tensor.is_floating_point() and tensor.numel() > 1:
                flat = tensor.view(-1)
                flat.copy_(flat[torch.randperm(flat.numel(), generator=generator)])
    return copied


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


def known_voxels(segmentation: np.ndarray, classes: Sequence[int]) -> np.ndarray:
    """Voxels of background or a class: not nnU-Net's -1 outside a normalisation mask, not an ignore label."""
    return (segmentation == 0) | np.isin(segmentation, classes)


def probe_fold(featurizer: Featurizer, data: "ProbeDataset", split: dict,
               window: Optional[Sequence[int]] = None) -> Dict[str, np.ndarray]:
    """Fit on the split's labelled cases, label its validation cases: per feature set, Dice per
    class, mean over cases. Voxels of no class are neither learnt nor scored. Where the labelled
    voxels' features would exceed MAX_FIT_BYTES, each is kept with the same probability (a fixed
    seed), so the fit sees the classes in their proportions."""
    columns = featurizer.columns
    labelled = sum(int(known_voxels(data.segmentations[case], data.classes).sum()) for case in split["train"])
    share = min(1.0, MAX_FIT_BYTES / featurizer.bytes(labelled))
    generator = torch.Generator().manual_seed(0)
    features, labels = [], []
    for case in split["train"]:
        segmentation = data.segmentations[case]
        for region, x in featurizer.regions(data.images[case], window):
            target = torch.from_numpy(segmentation[region].ravel().astype(np.int64))
            keep = torch.from_numpy(known_voxels(segmentation[region], data.classes).ravel())
            if share < 1:
                keep &= torch.rand(len(keep), generator=generator) < share
            features.append(x[keep])
            labels.append(target[keep])
    features, labels = torch.cat(features), torch.cat(labels)
    probes = {name: LinearProbe.fit(features[:, cols].contiguous(), labels, max(data.classes) + 1)
              for name, cols in columns.items()}
    del features  # the fit's copy can be large; prediction goes region by region
    scores = {name: [] for name in columns}
    for case in split["val"]:
        segmentation = data.segmentations[case]
        predictions = {name: np.zeros(segmentation.shape, np.int16) for name in columns}
        for region, x in featurizer.regions(data.images[case], window):
            for name, cols in columns.items():
                predictions[name][region] = probes[name].predict(x[:, cols]).reshape(segmentation[region].shape)
        known = known_voxels(segmentation, data.classes)
        for name, prediction in predictions.items():
            scores[name].append(dice_per_class(prediction[known], segmentation[known], data.classes))
    return {name: np.nanmean(np.stack(dice), axis=0) for name, dice in scores.items()}


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


def against_controls(rows: List[dict], checkpoint_arms: Sequence[str]) -> List[str]:
    """Markdown lines: each checkpoint's encoder against both controls (mean Dice over the folds), and a
    warning where position and intensity alone reach most of the best encoder's score."""
    def fold_mean(arm):
        return float(np.mean([r["dice"] for r in rows if r["arm"] == arm and r["class"] == "mean"]))
    position = fold_mean(POSITION)
    lines = ["Against the controls (mean Dice over the folds; an encoder has learnt what the probe reads only "
             f"above both): {POSITION} {position:.3f}"]
    for arm in checkpoint_arms:
        own, control = fold_mean(arm), fold_mean(f"{arm} shuffled")
        verdict = "above both" if own > max(position, control) else "NOT above both"
        lines.append(f"- {arm}: {own:.3f}, its shuffled encoder {control:.3f}: {verdict}")
    encoder_arms = [arm for arm in dict.fromkeys(r["arm"] for r in rows) if arm != POSITION]
    best = max(fold_mean(arm) for arm in encoder_arms)
    if best > 0 and position > 0.5 * best:
        lines.append(f"WARNING: {POSITION} alone reaches {position:.3f}, {position / best:.0%} of the best "
                     f"encoder's {best:.3f}: on this dataset position decides most of the classes, and the "
                     "probe says little about what the features hold.")
    return lines


def parse_encoders(specs: Sequence[Tuple[str, str]]) -> Dict[str, str]:
    encoders = {}
    for name, path in specs:
        if name == REFERENCE or name.startswith(REFERENCE + " ") or name == POSITION or name.endswith(" shuffled"):
            raise SystemExit(f"{name!r} names a control or the random reference encoder: call the checkpoint "
                             "something else")
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
    patch_size: List[int]          # the network's: the plan's rounded down to multiples of 16

    @classmethod
    def load(cls, dataset: str, plans_name: str, configuration: str, fraction: float, seed: int,
             folds: Sequence[int]) -> "ProbeDataset":
        from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
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
        patch = PlansManager(plans_file(name, plans_name)).get_configuration(configuration).patch_size
        return cls(name, classes, class_names(labels), splits, images, segmentations,
                   round_patch_size(patch, TOKEN_SIZE))

    @property
    def input_channels(self) -> int:
        return next(iter(self.images.values())).shape[0]


def check_feature_memory(data: ProbeDataset, featurizer: Featurizer, sliding_window: bool) -> None:
    """Every voxel of a forward gets a feature vector: refuse, saying why, a forward whose features
    alone would take more than MAX_FEATURE_BYTES (a whole CT at full resolution)."""
    if sliding_window:
        what, shape = "a window of the patch", data.patch_size
    else:
        case, shape = max(((c, image.shape[1:]) for c, image in data.images.items()), key=lambda c: np.prod(c[1]))
        what = case
    needed = featurizer.bytes(int(np.prod(shape)))
    if needed > MAX_FEATURE_BYTES:
        advice = ("probe a coarser configuration (-c 3d_lowres)" if sliding_window else
                  f"encode in windows of the network's patch ({'x'.join(map(str, data.patch_size))}) with "
                  "--sliding-window, or probe a coarser configuration (-c 3d_lowres)")
        raise SystemExit(f"{what} ({'x'.join(map(str, shape))} voxels) would need {needed / 2 ** 30:.1f} GiB of "
                         f"features: {advice}")


def probe_arms(arms: Dict[str, Callable[[int], Tuple[str, Featurizer]]], data: ProbeDataset,
               folds: Sequence[int], fraction: float, window: Optional[Sequence[int]] = None) -> Dict[str, List[dict]]:
    """Per feature set, one row per arm, fold and class and one for the mean over classes. ``arms``:
    arm -> (fold -> what the features are, their featurizer). Every fold encodes its cases again: encoding
    takes a fraction of the fit's time, and nothing is held between folds."""
    from tqdm import tqdm
    rows: Dict[str, List[dict]] = {}  # feature set -> rows
    progress = tqdm(total=len(arms) * len(folds), desc="linear probe", unit="fold")
    for arm, encoder_for in arms.items():
        for fold in folds:
            source, featurizer = encoder_for(fold)
            run = {"arm": arm, "fraction": fraction, "fold": fold, "encoder": source}
            for feature_set, dice in probe_fold(featurizer, data, data.splits[fold], window).items():
                per_class = [dict(run, **{"class": data.class_names[str(value)], "label": str(value), "dice": float(d)})
                             for value, d in zip(data.classes, dice)]
                mean = dict(run, **{"class": "mean", "label": "", "dice": float(np.nanmean(dice))})
                rows.setdefault(feature_set, []).extend(per_class + [mean])
            progress.update()
    progress.close()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="nnU-Net dataset ID or name, planned and preprocessed")
    parser.add_argument("--encoders", nargs="*", default=[], type=name_and_value, metavar="NAME=CHECKPOINT",
                        help='pre-training checkpoints to probe; "{fold}" in a path names one file per fold')
    parser.add_argument("--random-seeds", type=int, nargs="+", default=[0],
                        help="random encoders; the first is the reference (default: 0)")
    parser.add_argument("--preset", default=None, help="of the random encoders (default: the checkpoints')")
    parser.add_argument("-c", "--configuration", default="3d_fullres")
    parser.add_argument("-p", "--plans", default="nnUNetPlans")
    parser.add_argument("--fraction", type=float, default=0.1, help="labelled share of each fold's training cases")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--seed", type=int, default=0, help="label draw, as nnunet-mim benchmark --seed")
    parser.add_argument("--sliding-window", action="store_true",
                        help="encode in windows of the network's patch, not whole cases (for large images)")
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
            (lambda fold, seed=seed: (f"random, {preset}, seed {seed}", encoder_featurizer(seeded(seed))))
            for i, seed in enumerate(args.random_seeds)}
    arms[POSITION] = lambda fold: ("voxel position, its squares and products, intensity",
                                   position_featurizer(data.input_channels))
    for name, path in checkpoints.items():
        arms[name] = lambda fold, path=path: (path.format(fold=fold),
                                              encoder_featurizer(from_checkpoint(path.format(fold=fold))))
        arms[f"{name} shuffled"] = lambda fold, path=path: (
            f"{path.format(fold=fold)}, every tensor's entries shuffled",
            encoder_featurizer(shuffled(from_checkpoint(path.format(fold=fold)), seed=0)))
    check_feature_memory(data, arms[REFERENCE](args.folds[0])[1], args.sliding_window)
    random_arms = [arm for arm in arms if arm.startswith(REFERENCE)]
    window = data.patch_size if args.sliding_window else None
    encoding = f"windows of {'x'.join(map(str, window))}" if window else "whole cases"
    for feature_set, rows in probe_arms(arms, data, args.folds, args.fraction, window).items():
        title = (f"Linear probe, {feature_set} encoder features: {data.name}, {args.fraction:.0%} labels "
                 f"(label draw {args.seed}), folds {args.folds}, {encoding}; logistic regression, "
                 f"L2 {WEIGHT_DECAY:g}, L-BFGS {ITERATIONS} iterations")
        notes = paragraphs(against_random_encoders(rows, random_arms) if len(random_arms) > 1 else [],
                           against_controls(rows, list(checkpoints)))
        print(write_outputs(rows, args.output_folder, title, reference=REFERENCE, name=f"linear_probe_{feature_set}",
                            notes=notes))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
