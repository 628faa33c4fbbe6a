"""``nnunet-mim pretrain-dataset create``: images from nnU-Net datasets and folders become one
preprocessed nnU-Net dataset for pre-training, with no labels anywhere.

The path of a collection (each step one function):

    find_images      inputs -> SourceImage (case id, source, files); sources are only read
    scan             headers only: shape and spacing per image, or why it is skipped
    plan_collection  spacing and patch (given, like dataset N, or nnU-Net's rule on the scan),
                     normalisation (CT: a fixed window; MR: per-volume z-score) -> nnU-Net plans
    CasePreprocessor nnU-Net's own DefaultPreprocessor (crop, normalise, resample) under that
                     plan; only the image is written (blosc2 + properties), atomically
    create           all of it, in parallel, resumable, one run at a time; the summary and a
                     manifest on disk

What lands in ``nnUNet_preprocessed/DatasetXXX_NAME``: dataset.json (labels: background only),
dataset_fingerprint.json, nnUNetPlans.json, ``nnUNetPlans_3d_fullres/<case>.b2nd|.pkl`` and
``pretraining_collection.json`` (settings, sampling, every image found and what became of it).
There is no raw dataset and no label file: nnU-Net's planning needs labels, so the plan is written
here, and the pre-training trainers read images only.
"""
import json
import multiprocessing
import os
import pickle
import time
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from nnunet_mim.geometry import TOKEN_SIZE
from nnunet_mim.checkpointing import save_json, write_atomically
from nnunet_mim.data.sources import SourceImage, UnusableImage, find_images, printable, read_header, read_volume
from nnunet_mim.plans import PRETRAIN_NETWORK_CLASS, adapt_plans, round_patch_size
from nnunet_mim.pretraining.data import COLLECTION_MANIFEST as MANIFEST
from nnunet_mim.pretraining.data import (MANIFEST_FORMAT, ImagesOnlyDataset, fills_half_the_patch,
                                         load_collection_manifest)
from nnunet_mim.run_lock import exclusive_run

CONFIGURATION = "3d_fullres"
PATCH_MULTIPLE = TOKEN_SIZE  # a patch is whole tokens; MiM's trainer rounds down to 32 itself, as on any dataset
DEFAULT_PATCH_MULTIPLE = 32  # the default patch is one MiM uses as it is (L1 octants of whole tokens)
DEFAULT_PATCH_VOXELS = 96 ** 3  # the paper's 96^3 patch, reshaped to the collection's spacing
DEFAULT_CT_WINDOW = (-1000.0, 1000.0)
MAX_PROBLEMS_PRINTED = 20
BODY_HU = -500  # body vs air, for body-biased crops (nnU-Net's class_locations, "class" BODY_CLASS)
BODY_CLASS = 1


@dataclass
class CollectionSettings:
    modality: str = "ct"                                   # "ct" or "mr"
    spacing: Optional[List[float]] = None                  # (z, y, x) mm; None: nnU-Net's rule on the scan
    patch_size: Optional[List[int]] = None                 # voxels; None: DEFAULT_PATCH_VOXELS at that spacing
    like_dataset: Optional[str] = None                     # take spacing and patch from this dataset's plan
    ct_window: Tuple[float, float] = DEFAULT_CT_WINDOW
    batch_size: int = 2
    sampling: str = "uniform"                              # or "per_source": each source its weight's share
    source_weights: Dict[str, float] = field(default_factory=dict)  # per_source weights (default 1 each)
    test_images: bool = True                               # imagesTs of nnU-Net datasets too


# ---- scan ----------------------------------------------------------------------------------
def scan(images: Sequence[SourceImage]) -> List[dict]:
    """One manifest entry per image: usable ("pending") with shape and spacing, or "skipped"."""
    entries, seen, files_seen = [], set(), {}
    for image in tqdm(images, desc="reading headers", unit="image"):
        entry = {"case_id": image.case_id, "source": image.source, "files": [printable(f) for f in image.files]}
        if image.skip_reason:
            entries.append({**entry, "status": "skipped", "reason": image.skip_reason})
            continue
        if image.case_id in seen:
            entries.append({**entry, "status": "skipped", "reason": "duplicate case id (same file given twice?)"})
            continue
        seen.add(image.case_id)
        real = tuple(os.path.realpath(f) for f in image.files)
        if real in files_seen:  # a folder given twice, or reached again through a link
            entries.append({**entry, "status": "skipped", "reason": f"the same file(s) as {files_seen[real]}"})
            continue
        files_seen[real] = image.case_id
        header, reason = read_header(image.files)
        if header is None:
            entries.append({**entry, "status": "skipped", "reason": reason})
        else:
            entries.append({**entry, "status": "pending", "shape": list(header.shape), "spacing": list(header.spacing)})
    return entries


# ---- plan ----------------------------------------------------------------------------------
def nnunet_target_spacing(spacings: np.ndarray, shapes: np.ndarray) -> List[float]:
    """nnU-Net's fullres rule (median spacing; 10th percentile on a strongly anisotropic axis),
    called on our scan: nnU-Net's planner itself needs a raw dataset with labels."""
    from nnunetv2.experiment_planning.experiment_planners.default_experiment_planner import ExperimentPlanner
    fingerprint = {"spacings": spacings.tolist(), "shapes_after_crop": shapes.tolist()}
    planner = SimpleNamespace(dataset_fingerprint=fingerprint, anisotropy_threshold=3,
                              overwrite_target_spacing=None)
    return [float(s) for s in ExperimentPlanner.determine_fullres_target_spacing(planner)]


def default_patch_size(spacing: Sequence[float], median_shape: Sequence[float],
                       voxels: int = DEFAULT_PATCH_VOXELS, multiple: int = DEFAULT_PATCH_MULTIPLE) -> List[int]:
    """Equal physical extent on every axis (nnU-Net's starting point), about ``voxels`` in total
    (each axis to the nearest multiple of ``multiple``), no larger than the median image."""
    inverse = 1 / np.asarray(spacing, dtype=float)
    shape = inverse * (voxels / np.prod(inverse)) ** (1 / 3)
    nearest = [max(multiple, int(round(s / multiple)) * multiple) for s in shape]
    return [max(multiple, min(n, int(m) // multiple * multiple)) for n, m in zip(nearest, median_shape)]


def plan_of_dataset(dataset: str) -> Tuple[List[float], List[int]]:
    """(spacing, patch size) of another dataset's 3d_fullres plan, in image axis order."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    plans_file = os.path.join(nnUNet_preprocessed or "", maybe_convert_to_dataset_name(dataset), "nnUNetPlans.json")
    if not os.path.isfile(plans_file):
        raise FileNotFoundError(f"{plans_file} not found: plan dataset {dataset} with nnUNetv2_plan_and_preprocess")
    plans = load_json(plans_file)
    config = plans["configurations"][CONFIGURATION]
    backward = plans["transpose_backward"]  # the plan stores spacing and patch transposed
    return [config["spacing"][i] for i in backward], [config["patch_size"][i] for i in backward]


def intensity_properties(settings: CollectionSettings) -> Tuple[str, dict]:
    """Normalisation scheme and the properties nnU-Net's normaliser reads.

    CT: nnU-Net's CTNormalization with a fixed window instead of foreground statistics (there
    are no labels): clip to [low, high], then map linearly to [-1, 1]. MR: per-volume z-score."""
    if settings.modality == "ct":
        low, high = settings.ct_window
        return "CTNormalization", {"percentile_00_5": low, "percentile_99_5": high,
                                   "mean": (low + high) / 2, "std": (high - low) / 2}
    return "ZScoreNormalization", {}


def plan_collection(name: str, entries: List[dict], settings: CollectionSettings) -> Tuple[dict, dict, dict]:
    """nnU-Net plans, dataset.json and fingerprint for the usable entries."""
    usable = [e for e in entries if e["status"] == "pending"]
    if not usable:
        raise RuntimeError("no usable 3D image among the inputs (see the reasons in the scan)")
    spacings = np.array([e["spacing"] for e in usable], dtype=float)
    shapes = np.array([e["shape"] for e in usable], dtype=float)
    spacing, patch = settings.spacing, settings.patch_size
    if settings.like_dataset is not None:  # its patch rounded down as MAE and fine-tuning round it there
        like_spacing, like_patch = plan_of_dataset(settings.like_dataset)
        spacing, patch = spacing or like_spacing, patch or round_patch_size(like_patch, PATCH_MULTIPLE)
    spacing = list(spacing) if spacing else nnunet_target_spacing(spacings, shapes)
    resampled = [np.round(s * sp / np.array(spacing)) for s, sp in zip(shapes, spacings)]
    median_shape = np.median(resampled, 0)
    patch = list(patch) if patch else default_patch_size(spacing, median_shape)
    if any(p % PATCH_MULTIPLE for p in patch):
        raise ValueError(f"patch size {patch} must be a multiple of {PATCH_MULTIPLE} on every axis (16^3-voxel "
                         f"tokens; MiM pre-trains at the patch rounded down to multiples of 32)")
    scheme, properties = intensity_properties(settings)
    resampling = {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None}  # nnU-Net's defaults
    config = {"data_identifier": f"nnUNetPlans_{CONFIGURATION}", "preprocessor_name": "DefaultPreprocessor",
              "batch_size": settings.batch_size, "patch_size": patch,
              "median_image_size_in_voxels": median_shape.tolist(), "spacing": spacing,
              "normalization_schemes": [scheme], "use_mask_for_norm": [False],
              "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_data_kwargs": resampling,
              "resampling_fn_seg": "resample_data_or_seg_to_shape",
              "resampling_fn_seg_kwargs": {**resampling, "is_seg": True, "order": 1},
              "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
              "resampling_fn_probabilities_kwargs": {**resampling, "order": 1}, "batch_dice": False}
    plans = {"dataset_name": name, "plans_name": "nnUNetPlans",
             "original_median_spacing_after_transp": np.median(spacings, 0).tolist(),
             "original_median_shape_after_transp": np.median(shapes, 0).tolist(),
             "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
             "configurations": {CONFIGURATION: config},
             "experiment_planner_used": "nnunet_mim.data.collection.plan_collection",
             "label_manager": "LabelManager", "foreground_intensity_properties_per_channel": {"0": properties}}
    plans = adapt_plans(plans, CONFIGURATION, "B", PATCH_MULTIPLE, PRETRAIN_NETWORK_CLASS)
    dataset_json = {"channel_names": {"0": "CT" if settings.modality == "ct" else "MR"},
                    "labels": {"background": 0}, "numTraining": len(usable), "file_ending": ".nii.gz",
                    "description": "nnunet-mim pre-training collection: images only, no labels "
                                   f"(see {MANIFEST})"}
    fingerprint = {"spacings": spacings.tolist(), "shapes_after_crop": shapes.astype(int).tolist(),
                   "foreground_intensity_properties_per_channel": {"0": properties},
                   "median_relative_size_after_cropping": 1.0}
    return plans, dataset_json, fingerprint


# ---- preprocess ----------------------------------------------------------------------------
def is_done(folder: str, case_id: str) -> bool:
    """Properties there and the image's header readable: the image is renamed into place only
    once complete, after its properties, so a readable image means a finished case."""
    import blosc2
    image, properties = os.path.join(folder, case_id + ".b2nd"), os.path.join(folder, case_id + ".pkl")
    if not (os.path.isfile(image) and os.path.isfile(properties)):
        return False
    try:
        blosc2.open(image, mode="r")
        return True
    except Exception:  # a foreign or damaged file: redo the case
        return False


class CasePreprocessor:
    """Preprocesses one entry with nnU-Net's DefaultPreprocessor under the collection's plan."""

    def __init__(self, plans: dict, dataset_json: dict, output_folder: str):
        from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
        from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
        self.plans_manager = PlansManager(plans)
        self.configuration = self.plans_manager.get_configuration(CONFIGURATION)
        self.dataset_json, self.output_folder = dataset_json, output_folder
        self.preprocessor = DefaultPreprocessor(verbose=False)

    def __call__(self, entry: dict) -> dict:
        try:
            data, properties = read_volume(entry["files"])
            data, nonzero, properties = self.preprocessor.run_case_npy(data, None, properties, self.plans_manager,
                                                                       self.configuration, self.dataset_json)
            properties["class_locations"] = self.preprocessor._sample_foreground_locations(
                self.body_mask(data, nonzero)[None].astype(np.int8), [BODY_CLASS])
        except UnusableImage as error:
            return {**entry, "status": "skipped", "reason": str(error)}
        except Exception as error:  # one bad file must not stop ten thousand good ones
            return {**entry, "status": "failed", "reason": f"{type(error).__name__}: {str(error).strip()[:300]}"}
        patch = self.configuration.patch_size
        if not fills_half_the_patch(data.shape[1:], patch):
            return {**entry, "status": "skipped", "reason": f"less than half the patch {list(patch)} on some axis "
                                                            f"after cropping and resampling: {list(data.shape[1:])}"}
        return {**entry, **self.save(entry, data, properties), "status": "done"}

    def body_mask(self, data: np.ndarray, nonzero: np.ndarray) -> np.ndarray:
        """Where crops may be centred when pre-training biases crops towards the body: CT above
        BODY_HU (air excluded), MR inside nnU-Net's non-zero region."""
        if self.configuration.normalization_schemes[0] == "CTNormalization":
            window = self.plans_manager.foreground_intensity_properties_per_channel["0"]
            return data[0] > (BODY_HU - window["mean"]) / window["std"]
        return nonzero[0] >= 0

    def save(self, entry: dict, data: np.ndarray, properties: dict) -> dict:
        import blosc2
        from nnunetv2.training.dataloading.nnunet_dataset import comp_blosc2_params
        crop = [2 * p for p in self.configuration.patch_size]  # what the pre-training loader reads
        blocks, chunks = comp_blosc2_params(data.shape, crop, data.itemsize)
        properties["nnunet_mim"] = {"source": entry["source"], "files": entry["files"]}  # provenance
        stem = os.path.join(self.output_folder, entry["case_id"])

        def write_properties(path):
            with open(path, "wb") as f:
                pickle.dump(properties, f)

        def write_image(path):
            blosc2.asarray(np.ascontiguousarray(data, dtype=np.float32), urlpath=path, chunks=chunks, blocks=blocks,
                           cparams={"codec": blosc2.Codec.LZ4HC, "clevel": 5, "filters": [blosc2.Filter.SHUFFLE]},
                           mode="w")

        write_atomically(stem + ".pkl", write_properties)
        write_atomically(stem + ".b2nd", write_image)  # last: the image file is what makes it a case
        return {"preprocessed_shape": list(data.shape[1:]), "bytes": os.path.getsize(stem + ".b2nd")}


_worker: Optional[CasePreprocessor] = None


def _init_worker(plans: dict, dataset_json: dict, output_folder: str) -> None:
    global _worker
    _worker = CasePreprocessor(plans, dataset_json, output_folder)


def _run_worker(entry: dict) -> dict:
    return _worker(entry)


def preprocess_all(entries: List[dict], plans: dict, dataset_json: dict, output_folder: str,
                   num_processes: int) -> Iterator[dict]:
    """Results in completion order; one process runs in this one (tracebacks stay readable)."""
    if num_processes <= 1:
        yield from map(CasePreprocessor(plans, dataset_json, output_folder), entries)
        return
    with multiprocessing.get_context("fork").Pool(num_processes, _init_worker,
                                                  (plans, dataset_json, output_folder)) as pool:
        yield from pool.imap_unordered(_run_worker, entries)


# ---- the whole collection --------------------------------------------------------------------
def dataset_folder(dataset_id: int, name: str) -> str:
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import find_candidate_datasets
    if not nnUNet_preprocessed:
        raise RuntimeError("nnUNet_preprocessed is not set: the collection is written there")
    dataset_name = f"Dataset{dataset_id:03d}_{name}"
    others = [str(c) for c in find_candidate_datasets(dataset_id) if c != dataset_name]
    if others:
        raise FileExistsError(f"dataset ID {dataset_id} is taken by {others}; choose another ID")
    folder = os.path.join(nnUNet_preprocessed, dataset_name)
    if os.path.isdir(folder) and not os.path.isfile(os.path.join(folder, MANIFEST)):
        raise FileExistsError(f"{folder} exists and is not a pre-training collection; choose another ID")
    return folder


def save_manifest(folder: str, settings: CollectionSettings, inputs: Sequence[str], summary: Optional[dict],
                  entries: List[dict]) -> None:
    save_json({"format": MANIFEST_FORMAT, "settings": asdict(settings), "inputs": list(inputs), "summary": summary,
               "cases": entries}, os.path.join(folder, MANIFEST))


def resumed_settings(folder: str, settings: CollectionSettings) -> CollectionSettings:
    """A rerun keeps the first run's plan; options that contradict it are an error."""
    stored = CollectionSettings(**load_collection_manifest(folder)["settings"])
    with open(os.path.join(folder, "nnUNetPlans.json")) as f:
        config = json.load(f)["configurations"][CONFIGURATION]
    fixed = dict(stored.__dict__, spacing=config["spacing"], patch_size=config["patch_size"])
    given = {k: v for k, v in asdict(settings).items()
             if v not in (None, {}) and v != getattr(CollectionSettings(), k)}
    clashes = {k: (fixed[k], v) for k, v in given.items()
               if k in ("modality", "spacing", "patch_size", "ct_window", "like_dataset", "test_images")
               and list(np.atleast_1d(v)) != list(np.atleast_1d(fixed[k]))}
    if clashes:
        raise ValueError(f"{folder} was created with other settings " + ", ".join(
            f"{k}: stored {a}, given {b}" for k, (a, b) in clashes.items()) + "; use a new dataset ID")
    return CollectionSettings(**{**fixed, "batch_size": settings.batch_size, "sampling": settings.sampling,
                                 "source_weights": settings.source_weights or stored.source_weights})


def create(dataset_id: int, name: str, inputs: Sequence[str], settings: CollectionSettings,
           num_processes: int = 1) -> dict:
    """Build (or complete) the collection; returns the summary also stored in the manifest. A second run
    on the same collection while one is building it refuses (the lock file beside the folder)."""
    folder = dataset_folder(dataset_id, name)
    # locked per ID, not per name: two runs given one ID and two names must not both create a dataset
    with exclusive_run(os.path.join(os.path.dirname(folder), f".Dataset{dataset_id:03d}.lock"), folder):
        dataset_folder(dataset_id, name)  # again, under the lock: the other run may have taken the ID meanwhile
        return build(folder, inputs, settings, num_processes)


def build(folder: str, inputs: Sequence[str], settings: CollectionSettings, num_processes: int) -> dict:
    started = time.time()
    resuming = os.path.isfile(os.path.join(folder, MANIFEST))
    if resuming:
        settings = resumed_settings(folder, settings)
    entries = scan(find_images(inputs, settings.modality, settings.test_images))
    plans, dataset_json, fingerprint = plan_collection(os.path.basename(folder), entries, settings)
    config = plans["configurations"][CONFIGURATION]
    spacing, patch = np.array(config["spacing"]), config["patch_size"]
    for e in entries:
        if e["status"] == "pending":
            resampled = np.round(np.array(e["shape"]) * np.array(e["spacing"]) / spacing).astype(int)
            if not fills_half_the_patch(resampled, patch):
                e.update(status="skipped", reason=f"less than half the patch {patch} on some axis at "
                                                  f"{spacing.tolist()} mm: {resampled.tolist()} voxels")
    images_folder = os.path.join(folder, config["data_identifier"])
    os.makedirs(images_folder, exist_ok=True)
    orphans = sorted(set(ImagesOnlyDataset.get_identifiers(images_folder)) - {e["case_id"] for e in entries})
    if orphans:  # they would be trained on, yet belong to no input of this run
        raise RuntimeError(f"{len(orphans)} preprocessed case(s) in {images_folder} come from no input of this run, "
                           f"e.g. {orphans[:3]}: give the earlier inputs again, or delete those cases")
    save_json(dataset_json, os.path.join(folder, "dataset.json"))
    save_json(fingerprint, os.path.join(folder, "dataset_fingerprint.json"))
    save_json(plans, os.path.join(folder, "nnUNetPlans.json"))

    # the manifest exists before any work, so that a run killed now is continued, not refused
    save_manifest(folder, settings, inputs, None, entries)
    pending = [e for e in entries if e["status"] == "pending"]
    todo = [e for e in pending if not is_done(images_folder, e["case_id"])]
    already = {e["case_id"] for e in pending} - {e["case_id"] for e in todo}
    results = {r["case_id"]: r for r in tqdm(preprocess_all(todo, plans, dataset_json, images_folder, num_processes),
                                             total=len(todo), desc="preprocessing", unit="image")}
    for e in (e for e in entries if e["status"] == "pending"):  # not a skipped duplicate of the same case id
        if e["case_id"] in results:
            e.update(results[e["case_id"]])
        elif e["case_id"] in already:
            e.update(status="done", bytes=os.path.getsize(os.path.join(images_folder, e["case_id"] + ".b2nd")))
    done = [e for e in entries if e["status"] == "done"]
    summary = {"found": len(entries), "done": len(done),
               "processed_now": sum(r["status"] == "done" for r in results.values()), "already_done": len(already),
               "skipped": sum(e["status"] == "skipped" for e in entries),
               "failed": sum(e["status"] == "failed" for e in entries),
               "bytes_total": int(sum(e.get("bytes", 0) for e in done)),
               "seconds": round(time.time() - started, 1), "processes": num_processes,
               "sources": {s: sum(e["source"] == s for e in done) for s in sorted({e["source"] for e in entries})}}
    save_manifest(folder, settings, inputs, summary, entries)
    dataset_json["numTraining"] = len(done)
    save_json(dataset_json, os.path.join(folder, "dataset.json"))
    summary["folder"] = folder
    return summary


def format_summary(summary: dict, entries: List[dict]) -> str:
    lines = [f"collection: {summary['folder']}",
             f"images found {summary['found']}: ready {summary['done']} (processed now {summary['processed_now']}, "
             f"already done {summary['already_done']}), skipped {summary['skipped']}, failed {summary['failed']}",
             "per source: " + ", ".join(f"{s} {n}" for s, n in summary["sources"].items())]
    problems = [e for e in entries if e["status"] in ("skipped", "failed")]
    for e in problems[:MAX_PROBLEMS_PRINTED]:
        where = e["files"][0] if len(e["files"]) == 1 else f"DICOM series in {os.path.dirname(e['files'][0])}"
        lines.append(f"  {e['status']}: {where}: {e['reason']}")
    if len(problems) > MAX_PROBLEMS_PRINTED:
        lines.append(f"  ... {len(problems) - MAX_PROBLEMS_PRINTED} more: every reason is in {MANIFEST}")
    if summary["done"]:
        lines.append(f"disk: {summary['bytes_total'] / 2 ** 20:.1f} MiB in all, "
                     f"{summary['bytes_total'] / summary['done'] / 2 ** 20:.2f} MiB per volume")
    lines.append(f"time: {summary['seconds']:.1f} s with {summary['processes']} process(es)")
    return "\n".join(lines)
