"""Small labelled nnU-Net raw datasets built from real anatomy that installs offline.

Every case comes from ONE template (``templates.py``): a random smooth elastic deformation with a
small rotation and scaling, a random crop, and random intensity changes (gamma, contrast, bias
field, noise). The cases are not independent subjects, and figures made with them must say so.
"""
import json
import os
from typing import Dict, Tuple

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from nnunet_mim.data.templates import TEMPLATES


def random_deformation(shape, rng: np.random.Generator, amplitude: float, smoothness: float,
                       max_rotation_deg: float = 10, max_scale: float = 0.1) -> np.ndarray:
    """Sampling coordinates (3, *shape): a random rotation/scaling about the centre plus a smooth
    random displacement field."""
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    centre = (np.array(shape, dtype=np.float32) - 1) / 2
    angles = np.deg2rad(rng.uniform(-max_rotation_deg, max_rotation_deg, 3))
    rotation = np.eye(3)
    for axis, angle in enumerate(angles):
        i, j = [a for a in range(3) if a != axis]
        r = np.eye(3)
        r[i, i] = r[j, j] = np.cos(angle)
        r[i, j], r[j, i] = -np.sin(angle), np.sin(angle)
        rotation = rotation @ r
    matrix = rotation * rng.uniform(1 - max_scale, 1 + max_scale)
    coords = np.einsum("ij,j...->i...", matrix, grid - centre[:, None, None, None]) + centre[:, None, None, None]
    for axis in range(3):
        noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), smoothness)
        coords[axis] += noise / (np.abs(noise).max() + 1e-8) * amplitude
    return coords


def make_case(t1: np.ndarray, probabilities: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    coords = random_deformation(t1.shape, rng, amplitude=3.0, smoothness=4.0)
    image = ndimage.map_coordinates(t1, coords, order=1, mode="constant")
    probs = np.stack([ndimage.map_coordinates(p, coords, order=1, mode="constant", cval=float(c == 0))
                      for c, p in enumerate(probabilities)])
    label = probs.argmax(0).astype(np.uint8)
    # crop up to 10% per side
    slices = []
    for s in image.shape:
        lo, hi = rng.integers(0, max(1, s // 10), 2)
        slices.append(slice(lo, s - hi))
    image, label = image[tuple(slices)], label[tuple(slices)]
    # intensity: gamma, contrast, smooth bias field, noise
    image = np.clip(image, 0, None) / max(float(image.max()), 1e-6)
    image = image ** rng.uniform(0.7, 1.5) * rng.uniform(0.8, 1.2)
    bias = ndimage.gaussian_filter(rng.standard_normal(image.shape).astype(np.float32), 8)
    image = image * (1 + 0.3 * bias / (np.abs(bias).max() + 1e-8))
    image = image + rng.normal(0, 0.02, image.shape)
    return (image * 1000).astype(np.float32), label


def write_nifti(array: np.ndarray, spacing_mm: float, filename: str) -> None:
    image = sitk.GetImageFromArray(array)  # array axes (z, y, x) as SimpleITK expects
    image.SetSpacing([spacing_mm] * 3)
    sitk.WriteImage(image, filename)


def write_example_dataset(raw_folder: str, dataset_id: int = 990, num_train: int = 6, num_test: int = 3,
                          spacing_mm: float = 4.0, seed: int = 0, name: str = "MNIDemo", channels: int = 1,
                          binary: bool = False, template: str = "mni152") -> Dict[str, str]:
    """Write ``Dataset{id}_{name}`` into ``raw_folder``: imagesTr/labelsTr, imagesTs and labelsTs
    (the held-out reference, not used by nnU-Net). Refuses to touch an existing dataset.

    ``channels`` > 1 adds contrast-inverted copies (a stand-in for a second MR sequence);
    ``binary`` merges all foreground classes into one "brain" label. ``template``: a name in
    ``templates.TEMPLATES``."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown template {template!r}; choose from {sorted(TEMPLATES)}")
    anatomy = TEMPLATES[template]
    folder = os.path.join(raw_folder, f"Dataset{dataset_id:03d}_{name}")
    if os.path.exists(folder):
        raise FileExistsError(f"{folder} exists; refusing to overwrite a dataset")
    t1, probabilities = anatomy.load(spacing_mm)  # before any folder exists: a missing source leaves nothing
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        os.makedirs(os.path.join(folder, sub))
    rng = np.random.default_rng(seed)
    for i in range(num_train + num_test):
        split = "Tr" if i < num_train else "Ts"
        image, label = make_case(t1, probabilities, rng)
        case = f"{anatomy.case_prefix}_{i:03d}"
        for c in range(channels):
            channel = image if c == 0 else (image.max() - image) * rng.uniform(0.5, 1.5)
            write_nifti(channel, spacing_mm, os.path.join(folder, f"images{split}", f"{case}_{c:04d}.nii.gz"))
        if binary:
            label = (label > 0).astype(np.uint8)
        write_nifti(label, spacing_mm, os.path.join(folder, f"labels{split}", f"{case}.nii.gz"))
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        labels = {"background": 0, "brain": 1} if binary else anatomy.labels
        channel_names = {str(c): anatomy.channel_name if c == 0 else f"inverted_{c}" for c in range(channels)}
        json.dump({"channel_names": channel_names, "labels": labels, "numTraining": num_train,
                   "file_ending": ".nii.gz", "description": anatomy.source_note}, f, indent=2)
    return {"folder": folder, "name": os.path.basename(folder)}
