"""Finding the images of a pre-training collection: nnU-Net raw datasets, folders of image files,
folders of DICOM series. Sources are only read.

Each image found becomes one ``SourceImage``: a single-channel 3D volume with a unique case id.
An nnU-Net dataset contributes the channels of its imagesTr and imagesTs whose modality matches
the collection's (a 4-channel MRI dataset gives 4 volumes per case to an MR collection and none to
a CT collection). A folder contributes every image file under it and every DICOM series
(SimpleITK/GDCM groups the slices), all taken to be of the collection's modality.

``read_header`` reads sizes and spacings without decoding voxels; problems that make an image
unusable (unreadable, 2D, 4D, absurd spacing, a NIfTI header without spacing) are reported as a
reason, never raised. ``read_volume`` raises ``UnusableImage`` for what only the voxels show: a
truncated file (SimpleITK fills the missing voxels with zeros) or non-finite voxels.
"""
import gzip
import os
import re
import struct
import tempfile
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

from nnunet_mim.checkpointing import unreadable

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_ENDINGS = (".dcm", ".ima", "")  # DICOM files often have no extension at all
SPACING_RANGE_MM = (0.05, 20.0)  # outside it a header is wrong, not a scan
MAX_VOXELS = 2 ** 31  # a header claiming more is corrupt or crafted (a 512 x 512 x 2000 CT is 2 ** 29)
# folders of label maps, never images: nnU-Net raw datasets' and preprocessed datasets' (given as folders)
LABEL_FOLDERS = ("labelsTr", "labelsTs", "gt_segmentations")
SLICE_GAP_TOLERANCE = 0.5  # a DICOM slice gap off the median by more than this share: a missing or doubled slice


class UnusableImage(ValueError):
    """An image that reads, but whose voxels must not be trained on; the message is the reason."""


@dataclass(frozen=True)
class SourceImage:
    source: str               # the dataset or folder it came from (sampling weights are per source)
    case_id: str              # unique, file-name safe identifier in the collection
    files: Tuple[str, ...]    # one image file, or the slice files of one DICOM series
    skip_reason: str = ""     # found, but not an image to use: why (reported in the manifest, never read)


def printable(path: str) -> str:
    """``path`` as text that prints and serialises: a name that is not UTF-8 shows its bytes escaped."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def not_a_file_to_read(path: str) -> str:
    """Why ``path`` cannot be read as an image file, or "": a name that is not UTF-8, or what
    ``checkpointing.unreadable`` finds (a FIFO, socket or device, a file this user may not read, ...)."""
    if printable(path) != path:
        return "its name is not valid UTF-8 (rename the file)"
    return unreadable(path)


@dataclass(frozen=True)
class Header:
    shape: Tuple[int, ...]      # array axis order (z, y, x), as nnU-Net's SimpleITK reader gives it
    spacing: Tuple[float, ...]  # mm, same order


def is_modality(channel_name: str, modality: str) -> bool:
    """nnU-Net's rule: the channel name "CT" (any case) means CT; every other name is not CT."""
    is_ct = channel_name.casefold() == "ct"
    return is_ct if modality == "ct" else not is_ct


def file_stem(name: str) -> str:
    return re.sub(r"(\.nii\.gz|\.nii|\.nrrd|\.nhdr|\.mha|\.mhd)$", "", name)


def case_id(source: str, relative: str) -> str:
    stem = file_stem(relative)
    identifier = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{source}__{stem}").strip("_")
    # nnU-Net takes "<id>.b2nd" as a case unless it ends in "_seg.b2nd"
    return identifier + "_img" if identifier.endswith("_seg") else identifier


def nnunet_dataset_images(dataset: str, modality: str, test_images: bool = True) -> Iterator[SourceImage]:
    """imagesTr (and imagesTs unless ``test_images`` is False) of an nnU-Net raw dataset, an ID or name in
    nnUNet_raw or the dataset's folder (labels are not read). A channel of another modality is reported."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.utils import get_identifiers_from_splitted_dataset_folder
    if os.path.isdir(dataset):
        folder = os.path.abspath(dataset)
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(folder))
    else:
        name = maybe_convert_to_dataset_name(dataset)
        folder = os.path.join(nnUNet_raw or "", name)
    if not os.path.isfile(os.path.join(folder, "dataset.json")):
        raise FileNotFoundError(f"{folder}/dataset.json not found: is nnUNet_raw set and {name} a raw dataset?")
    meta = load_json(os.path.join(folder, "dataset.json"))
    ending, channels = meta["file_ending"], meta["channel_names"]
    wanted = [int(c) for c, n in channels.items() if is_modality(n, modality)]
    for split in ("imagesTr", "imagesTs") if test_images else ("imagesTr",):
        images = os.path.join(folder, split)
        if not os.path.isdir(images):
            continue
        for case in get_identifiers_from_splitted_dataset_folder(images, ending):
            for c in sorted(int(c) for c in channels):
                suffix = f"_{c:04d}" if len(channels) > 1 else ""
                other = "" if c in wanted else (f"channel {c} ({channels[str(c)]}) is not {modality.upper()}, the "
                                                "collection's modality")
                path = os.path.join(images, f"{case}_{c:04d}{ending}")
                yield SourceImage(name, case_id(name, case + suffix), (path,), other)


def folder_images(folder: str, source: str) -> Iterator[SourceImage]:
    """Image files and DICOM series anywhere under ``folder``, in a stable order."""
    for directory, subdirs, files in os.walk(folder):
        subdirs.sort()
        relative_dir = os.path.relpath(directory, folder)
        images = [n for n in sorted(files) if not n.startswith(".") and n.lower().endswith(IMAGE_ENDINGS)]
        label_folder = os.path.basename(directory) in LABEL_FOLDERS
        stems = Counter(file_stem(n) for n in images)
        for name in images:
            # scan_1.nii.gz and scan_1.mha are two images: the ending keeps their case ids apart
            unique = name if stems[file_stem(name)] == 1 else name.replace(".", "_")
            path = os.path.join(directory, name)
            reason = (f"a label map ({os.path.basename(directory)} of an nnU-Net dataset), not an image"
                      if label_folder else not_a_file_to_read(path))
            yield SourceImage(source, case_id(source, printable(os.path.normpath(os.path.join(relative_dir, unique)))),
                              (path,), reason)
        if label_folder:
            continue
        dicom_candidates = [n for n in sorted(files) if not n.startswith(".") and not n.lower().endswith(IMAGE_ENDINGS)
                            and os.path.splitext(n)[1].lower() in DICOM_ENDINGS]
        unreadable = [n for n in dicom_candidates if not_a_file_to_read(os.path.join(directory, n))]
        for name in unreadable:  # never handed to GDCM, which would wait on a FIFO or fail on the name
            path = os.path.join(directory, name)
            yield SourceImage(source, case_id(source, printable(os.path.normpath(os.path.join(relative_dir, name)))),
                              (path,), not_a_file_to_read(path))
        dicom_candidates = [n for n in dicom_candidates if n not in unreadable]
        if dicom_candidates:
            in_series = set()
            # GDCM reads every file of the folder it is given: it gets a folder of links to the candidates only,
            # so that a FIFO or an image file beside them is never opened by it
            with tempfile.TemporaryDirectory(prefix="nnunet_mim_dicom_") as links:
                for name in dicom_candidates:
                    os.symlink(os.path.join(directory, name), os.path.join(links, name))
                for series in sitk.ImageSeriesReader.GetGDCMSeriesIDs(links):
                    slices = tuple(os.path.join(directory, os.path.basename(f))
                                   for f in sitk.ImageSeriesReader.GetGDCMSeriesFileNames(links, series))
                    in_series.update(os.path.basename(f) for f in slices)
                    yield SourceImage(source, case_id(source, os.path.join(relative_dir, series)), slices)
            # files GDCM put in no series (corrupt, or not DICOM): reported with a reason, not dropped unseen
            for name in (n for n in dicom_candidates if n not in in_series):
                yield SourceImage(source, case_id(source, os.path.normpath(os.path.join(relative_dir, name))),
                                  (os.path.join(directory, name),))


def find_images(inputs: Sequence[str], modality: str, test_images: bool = True) -> Iterator[SourceImage]:
    """Each input: an nnU-Net dataset ID or name, or a folder (its name becomes the source name)."""
    seen_sources = set()
    for item in inputs:
        if os.path.isdir(item) and os.path.isfile(os.path.join(item, "dataset.json")) and \
                os.path.isdir(os.path.join(item, "imagesTr")):  # an nnU-Net raw dataset given by its folder
            yield from nnunet_dataset_images(item, modality, test_images)
        elif os.path.isdir(item):
            source = re.sub(r"[^A-Za-z0-9._-]+", "_", os.path.basename(os.path.normpath(item)))
            while source in seen_sources:  # two folders with the same name stay two sources
                source += "_"
            seen_sources.add(source)
            yield from folder_images(item, source)
        elif item.isdigit() or item.startswith("Dataset"):
            yield from nnunet_dataset_images(item, modality, test_images)
        else:
            raise FileNotFoundError(f"input {item!r} is neither a folder nor an nnU-Net dataset ID or name")


def nifti_pixdim(path: str) -> Optional[Tuple[float, float, float]]:
    """The voxel sizes a NIfTI-1 header states (pixdim[1:4]), read from the bytes: ITK replaces a 0 by 1
    without a word. None when the file is not NIfTI-1."""
    opener = gzip.open if path.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            header = f.read(348)
    except (OSError, EOFError, zlib.error):
        return None
    for order in "<>":
        if len(header) == 348 and struct.unpack(order + "i", header[:4])[0] == 348:
            return struct.unpack(order + "3f", header[80:92])
    return None


def read_header(files: Sequence[str]) -> Tuple[Optional[Header], str]:
    """(header, "") for a usable 3D volume, else (None, reason)."""
    if files[0].lower().endswith((".nii", ".nii.gz")):
        pixdim = nifti_pixdim(files[0])
        if pixdim is not None and not all(np.isfinite(p) and p > 0 for p in pixdim):
            return None, (f"the NIfTI header states no voxel size (pixdim {list(pixdim)}); SimpleITK would read "
                          "it as 1 mm: fix the header")
    reader = sitk.ImageFileReader()
    try:
        reader.SetFileName(files[0])
        reader.ReadImageInformation()
    except RuntimeError as error:
        return None, f"unreadable: {str(error).strip().splitlines()[-1][:200]}"
    size, spacing = list(reader.GetSize()), list(reader.GetSpacing())
    if len(files) > 1:  # a DICOM series: one file per slice, slice spacing from the slice positions
        if reader.GetDimension() != 3 or size[2] != 1:
            return None, f"DICOM series whose files are not single slices (size {size})"
        size[2] = len(files)
        gaps, problem = slice_gaps(files, reader)
        if problem:
            return None, problem
        spacing[2] = float(np.median(gaps))
    if reader.GetDimension() == 2 or (len(size) == 3 and min(size) == 1):
        return None, f"2D image (size {size})"
    if len(size) != 3:
        return None, f"{len(size)}D image (size {size}); only 3D volumes are used"
    if np.prod(size, dtype=np.float64) > MAX_VOXELS:
        return None, (f"its header claims {'x'.join(map(str, size))} voxels ({np.prod(size, dtype=np.float64):.3g}), "
                      f"more than any scan ({MAX_VOXELS:.3g}): a corrupt or crafted header; nothing was read")
    low, high = SPACING_RANGE_MM
    if not all(np.isfinite(s) and low <= s <= high for s in spacing):
        return None, f"absurd spacing {[round(s, 4) for s in spacing]} mm (expected {low} to {high} mm)"
    return Header(tuple(size[::-1]), tuple(float(s) for s in spacing[::-1])), ""


def slice_gaps(files: Sequence[str], first: "sitk.ImageFileReader") -> Tuple[np.ndarray, str]:
    """(distances between consecutive slices along the slice normal, "") of a DICOM series in GDCM's order, or
    (_, reason) where they are not even: a slice missing (a gap of twice the others) or doubled (a gap of 0)."""
    direction = np.array(first.GetDirection()).reshape(3, 3)
    normal = direction[:, 2]
    positions = []
    for path in files:
        reader = sitk.ImageFileReader()
        reader.SetFileName(path)
        try:
            reader.ReadImageInformation()
        except RuntimeError as error:
            return np.array([]), f"unreadable slice {path}: {str(error).strip().splitlines()[-1][:200]}"
        positions.append(float(np.dot(reader.GetOrigin(), normal)))
    gaps = np.abs(np.diff(positions))
    median = float(np.median(gaps))
    odd = np.flatnonzero(np.abs(gaps - median) > SLICE_GAP_TOLERANCE * median)
    if median <= 0 or len(odd):
        where = ", ".join(f"{gaps[i]:.3g} mm after slice {i + 1}" for i in odd[:3])
        return gaps, (f"its slices are not evenly spaced (median gap {median:.3g} mm; {where}): a missing or "
                      "duplicated slice would collapse or double the geometry")
    return gaps, ""


def nifti_voxels_as_stored(path: str) -> np.ndarray:
    """A NIfTI file's voxels as the file stores them (nibabel): what SimpleITK hides shows only here. It reads
    a truncated file without an error, zeros in place of the missing voxels, and ITK's NIfTI reader turns
    NaN into 0."""
    import nibabel
    try:
        return np.asanyarray(nibabel.load(path).dataobj)
    except (EOFError, OSError, zlib.error) as error:
        raise UnusableImage(f"truncated or corrupt file ({str(error).splitlines()[0]}); SimpleITK would fill the "
                            "rest with zeros") from None


def read_volume(files: Sequence[str]) -> Tuple[np.ndarray, dict]:
    """Voxels as float32 (1, z, y, x) and nnU-Net's properties (as its SimpleITKIO gives them)."""
    stored = nifti_voxels_as_stored(files[0]) if files[0].lower().endswith((".nii", ".nii.gz")) else None
    image = sitk.ReadImage(list(files) if len(files) > 1 else files[0], sitk.sitkFloat32)
    if image.GetDimension() != 3:
        raise ValueError(f"expected a 3D image, got {image.GetDimension()}D")
    properties = {"sitk_stuff": {"spacing": image.GetSpacing(), "origin": image.GetOrigin(),
                                 "direction": image.GetDirection()},
                  "spacing": list(image.GetSpacing())[::-1]}
    data = sitk.GetArrayFromImage(image)[None]
    checked = data if stored is None else stored
    non_finite = int(checked.size - np.count_nonzero(np.isfinite(checked))) if checked.dtype.kind == "f" else 0
    if non_finite:
        raise UnusableImage(f"{non_finite} of {checked.size} voxels are NaN or infinite")
    if data.size and data.min() == data.max():
        raise UnusableImage(f"every voxel is {float(data.flat[0]):g}: a blank volume has nothing to reconstruct")
    return data, properties

