"""Labelled single-subject templates that install offline: the anatomy behind the example datasets.

A template is one image with per-class label probabilities on its grid (channel 0 = background),
resampled to the requested spacing. The example datasets deform it into cases (``example.py``).

``mni152``: the MNI152 2009 T1 template (skull-stripped) that nilearn ships. Classes: inside
nilearn's brain mask, the argmax of (CSF = 1 - GM - WM, GM, WM); CSF counts as background. Grey
vs white matter is mostly an intensity decision.

``colin27-lobes``: the Colin27 T1 head (with skull) and the AAL atlas from Debian's
``mricron-data`` (``apt-get install mricron-data``). Classes: AAL's own region families (the
leading digit of each region's code in aal.nii.txt), and every brain voxel takes the family of
its nearest AAL region, so the classes are solid territories (grey and white matter) whose
borders run through tissue of one intensity: where a voxel lies decides its class, not how bright
it is. The brain is ch2bet's mask joined with the AAL regions, holes filled.

``mni152-lobes``: the MNI152 2009 T1 template (another head: an average of 152 brains, skull-stripped)
with ``colin27-lobes``' classes carried over through both files' world coordinates (both lie in MNI
space, so no registration is run). Every voxel of nilearn's MNI152 brain mask takes the class of the
nearest carried-over voxel. The classes are therefore approximate on this anatomy (the two brain
masks overlap with Dice 0.95), but they are the same position-decided territories on a different
image, which is what a second context-decided dataset needs.

``ct-phantom``: ``phantom.py``'s CT-like ellipsoid (soft tissue around a dense core, in HU) on a 19.2 cm
field of view. Not anatomy: it needs no package beyond numpy, so the GPU check builds its dataset with it
on a machine that has no nilearn.
"""
import os
from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import numpy as np
from scipy import ndimage

MRICRON_TEMPLATES = "/usr/share/mricron/templates"
# AAL region code // 1000 -> class (aal.nii.txt: "<value> <name> <code>")
AAL_FAMILIES = {2: "frontal", 3: "insula", 4: "limbic", 5: "occipital", 6: "parietal", 7: "deep_grey",
                8: "temporal", 9: "cerebellum"}


@dataclass(frozen=True)
class Template:
    name: str
    labels: Dict[str, int]       # nnU-Net's dataset.json "labels"
    channel_name: str
    case_prefix: str
    source_note: str             # goes into dataset.json and next to every figure made from it
    load: Callable[[float], Tuple[np.ndarray, np.ndarray]]  # spacing (mm) -> image, probabilities


def resample(volumes: np.ndarray, spacing_mm: float) -> np.ndarray:
    """(C, Z, Y, X) volumes on a 1 mm grid -> ``spacing_mm`` (linear: probabilities stay soft)."""
    return np.stack([ndimage.zoom(v, 1.0 / spacing_mm, order=1) for v in volumes])


def array(image) -> np.ndarray:
    return np.asarray(image.dataobj, dtype=np.float32)


def load_mni152_tissue(spacing_mm: float) -> Tuple[np.ndarray, np.ndarray]:
    from nilearn import datasets  # bundled with the package: no download

    t1 = array(datasets.load_mni152_template(resolution=1))
    gm = array(datasets.load_mni152_gm_template(resolution=1))
    wm = array(datasets.load_mni152_wm_template(resolution=1))
    brain = array(datasets.load_mni152_brain_mask(resolution=1)) > 0
    csf = np.clip(1 - gm - wm, 0, 1)
    probabilities = np.stack([np.where(brain, csf, 1.0), gm * brain, wm * brain])
    return resample(t1[None], spacing_mm)[0], resample(probabilities, spacing_mm)


def read_mricron(name: str) -> np.ndarray:
    import SimpleITK as sitk
    path = os.path.join(MRICRON_TEMPLATES, name)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: the Colin27/AAL template comes with Debian's mricron-data "
                                "(apt-get update && apt-get install -y mricron-data)")
    return sitk.GetArrayFromImage(sitk.ReadImage(path))


def aal_family_of_value() -> np.ndarray:
    """Lookup table: AAL voxel value -> class index (1-based, in AAL_FAMILIES order)."""
    family_index = {digit: i + 1 for i, digit in enumerate(AAL_FAMILIES)}
    lookup = np.zeros(256, dtype=np.uint8)
    with open(os.path.join(MRICRON_TEMPLATES, "aal.nii.txt")) as f:
        for line in f:
            if line.strip():
                value, _, code = line.split()
                lookup[int(value)] = family_index[int(code) // 1000]
    return lookup


def colin27_lobe_map() -> np.ndarray:
    """Class per voxel on Colin27's 1 mm grid (0 outside the brain)."""
    aal = read_mricron("aal.nii.gz")
    brain = ndimage.binary_fill_holes((read_mricron("ch2bet.nii.gz") > 0) | (aal > 0))
    _, nearest = ndimage.distance_transform_edt(aal == 0, return_indices=True)
    families = aal_family_of_value()[aal[tuple(nearest)]]
    return np.where(brain, families, 0).astype(np.uint8)


def one_hot(classes: np.ndarray) -> np.ndarray:
    return np.stack([(classes == c).astype(np.float32) for c in range(len(AAL_FAMILIES) + 1)])


def load_colin27_lobes(spacing_mm: float) -> Tuple[np.ndarray, np.ndarray]:
    t1 = read_mricron("ch2.nii.gz").astype(np.float32)
    return resample(t1[None], spacing_mm)[0], resample(one_hot(colin27_lobe_map()), spacing_mm)


def colin27_lobes_on_grid(shape: Tuple[int, int, int], affine: np.ndarray) -> np.ndarray:
    """Colin27's lobe map carried to a grid in the same world space (nearest voxel), array axes as
    nibabel's (x, y, z); 0 where the grid lies outside Colin27's volume."""
    import nibabel as nib
    colin_affine = nib.load(os.path.join(MRICRON_TEMPLATES, "aal.nii.gz")).affine
    lobes = colin27_lobe_map().transpose(2, 1, 0)  # SimpleITK's (z, y, x) -> nibabel's (x, y, z)
    grid_to_colin = np.linalg.inv(colin_affine) @ affine
    return ndimage.affine_transform(lobes, grid_to_colin[:3, :3], grid_to_colin[:3, 3], output_shape=shape,
                                    order=0, cval=0)


def mni152_lobe_map() -> Tuple[np.ndarray, np.ndarray]:
    """The MNI152 T1 and its class per voxel (1 mm, nibabel axes; 0 outside nilearn's brain mask)."""
    from nilearn import datasets  # bundled with the package: no download
    t1_image = datasets.load_mni152_template(resolution=1)
    brain = array(datasets.load_mni152_brain_mask(resolution=1)) > 0
    carried = colin27_lobes_on_grid(t1_image.shape, t1_image.affine)
    _, nearest = ndimage.distance_transform_edt(carried == 0, return_indices=True)
    return array(t1_image), np.where(brain, carried[tuple(nearest)], 0).astype(np.uint8)


def load_mni152_lobes(spacing_mm: float) -> Tuple[np.ndarray, np.ndarray]:
    t1, lobes = mni152_lobe_map()
    return resample(t1[None], spacing_mm)[0], resample(one_hot(lobes), spacing_mm)


def load_ct_phantom(spacing_mm: float) -> Tuple[np.ndarray, np.ndarray]:
    from nnunet_mim.data.phantom import ct_phantom, ct_phantom_classes
    shape = (max(16, round(192 / spacing_mm)),) * 3
    classes = ct_phantom_classes(shape)
    return (ct_phantom(shape, np.random.default_rng(0)).astype(np.float32),
            np.stack([(classes == c).astype(np.float32) for c in range(3)]))


TEMPLATES = {
    "mni152": Template(
        "mni152", {"background": 0, "grey_matter": 1, "white_matter": 2}, "T1", "mni",
        "all cases are deformations of ONE template (MNI152 2009, via nilearn); they are not independent subjects",
        load_mni152_tissue),
    "colin27-lobes": Template(
        "colin27-lobes", {"background": 0, **{name: i + 1 for i, name in enumerate(AAL_FAMILIES.values())}},
        "T1", "colin",
        "all cases are deformations of ONE subject (Colin27 T1 with the AAL atlas grouped into region families, "
        "via Debian mricron-data); they are not independent subjects",
        load_colin27_lobes),
    "mni152-lobes": Template(
        "mni152-lobes", {"background": 0, **{name: i + 1 for i, name in enumerate(AAL_FAMILIES.values())}},
        "T1", "mnilobes",
        "all cases are deformations of ONE template (MNI152 2009 via nilearn) whose labels are Colin27's AAL region "
        "families carried over through MNI world coordinates (approximate on this anatomy); not independent subjects",
        load_mni152_lobes),
    "ct-phantom": Template(
        "ct-phantom", {"background": 0, "soft_tissue": 1, "core": 2}, "CT", "phantom",
        "all cases are deformations of ONE synthetic CT phantom (an ellipsoid with a dense core); not anatomy",
        load_ct_phantom),
}
