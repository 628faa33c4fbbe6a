"""What the pre-training loader reads: images only, sampled uniformly or per source.

``ImagesOnlyDataset`` is nnU-Net's blosc2 dataset without the label file: a pre-training
collection has none, and in a labelled dataset pre-training must not read them. nnU-Net's loader
still crops a segmentation alongside the image; it gets an all-zero view that costs no memory.

``sampling_probabilities`` turns a collection's sampling setting into the per-case
probabilities nnU-Net's loader accepts: "uniform" (every case equally likely, the paper) or
"per_source" (each source gets its weight's share of the draws, split evenly among its cases,
so that one big source does not drown the others).
"""
import os
from collections import Counter
from typing import Optional, Sequence

import blosc2
import numpy as np
from batchgenerators.utilities.file_and_folder_operations import load_json
from nnunetv2.training.dataloading.nnunet_dataset import nnUNetBaseDataset, nnUNetDatasetBlosc2

from nnunet_mim.checkpointing import read_properties

COLLECTION_MANIFEST = "pretraining_collection.json"
MANIFEST_FORMAT = 1  # raised when the manifest's fields change meaning; older manifests have no "format" (1)


class ImagesOnlyDataset(nnUNetDatasetBlosc2):
    def open_image(self, identifier):
        """The image, compressed and memory-mapped: its shape costs a header read."""
        return blosc2.open(urlpath=os.path.join(self.source_folder, identifier + ".b2nd"), mode="r",
                           dparams={"nthreads": 1}, **self.mmap_kwargs)

    def load_case(self, identifier):
        data = self.open_image(identifier)
        properties = read_properties(os.path.join(self.source_folder, identifier + ".pkl"))  # never runs its code
        no_labels = np.broadcast_to(np.zeros((), dtype=np.int8), (1, *data.shape[1:]))
        return data, no_labels, None, properties


def fills_half_the_patch(shape: Sequence[int], patch_size: Sequence[int]) -> bool:
    """Whether an image of ``shape`` fills at least half the patch on every axis. nnU-Net pads a
    crop of a smaller image, which is fine; below half, a crop would be mostly padding."""
    return all(2 * s >= p for s, p in zip(shape, patch_size))


def check_images_fit(dataset: nnUNetBaseDataset, patch_size: Sequence[int]) -> None:
    """Refuse a patch that even the largest image does not fill half of on some axis: pre-training
    would mostly reconstruct padding."""
    # headers only, not the properties (they hold crop locations); nnU-Net's legacy numpy format
    # has no header-only access
    open_image = getattr(dataset, "open_image", lambda identifier: dataset.load_case(identifier)[0])
    largest = np.zeros(len(patch_size), dtype=int)
    for identifier in dataset.identifiers:
        largest = np.maximum(largest, open_image(identifier).shape[1:])
    if not fills_half_the_patch(largest, patch_size):
        raise RuntimeError(f"the patch {list(patch_size)} does not fit the images: the largest preprocessed image is "
                           f"{largest.tolist()} voxels (per axis), so every crop would be mostly padding. Use a "
                           "smaller patch (plans.json, or --patch-size of nnunet-mim pretrain-dataset create) or a "
                           "finer spacing")


def load_collection_manifest(preprocessed_dataset_folder: str) -> Optional[dict]:
    """The collection's manifest, or None for an ordinary nnU-Net dataset."""
    path = os.path.join(preprocessed_dataset_folder, COLLECTION_MANIFEST)
    if not os.path.isfile(path):
        return None
    manifest = load_json(path)
    written = manifest.get("format", 1) if isinstance(manifest, dict) else None
    if not isinstance(written, int) or written > MANIFEST_FORMAT or not isinstance(manifest.get("settings"), dict):
        raise ValueError(f"{path} is a manifest of format {written!r}; this nnunet-mim reads format "
                         f"{MANIFEST_FORMAT}: upgrade nnunet-mim, or build the collection again with this one")
    return manifest


def sampling_probabilities(identifiers: Sequence[str], manifest: Optional[dict]) -> Optional[np.ndarray]:
    """Per-case probabilities in the order of ``identifiers``; None means uniform."""
    if manifest is None or manifest["settings"]["sampling"] == "uniform":
        return None
    source_of = {case["case_id"]: case["source"] for case in manifest["cases"]}
    sources = [source_of[i] for i in identifiers]
    cases_per_source = Counter(sources)
    weights = manifest["settings"]["source_weights"]
    p = np.array([weights.get(s, 1.0) / cases_per_source[s] for s in sources], dtype=float)
    if p.sum() <= 0:
        raise ValueError(f"source weights {weights} give every case probability 0")
    return p / p.sum()
