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
import zlib
from collections import Counter
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np
import SimpleITK as sitk

IMAGE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
DICOM_ENDINGS = (".dcm", ".ima", "")  # DICOM files often have no extension at all
SPACING_RANGE_MM = (0.05, 20.0)  # outside it a header is wrong, not a scan


class UnusableImage(ValueError):
    """An image that reads, but whose voxels must not be trained on; the message is the reason."""


@dataclass(frozen=True)
class SourceImage:
    source: str               # the dataset or folder it came from (sampling weights are per source)
    case_id: str              # unique, file-name safe identifier in the collection
    files: Tuple[str, ...]    # one image file, or the slice files of one DICOM series


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
    """imagesTr (and imagesTs unless ``test_images`` is False) of an nnU-Net raw dataset (labels
    are not read)."""
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.utils import get_identifiers_from_splitted_dataset_folder
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
            for c in wanted:
                suffix = f"_{c:04d}" if len(channels) > 1 else ""
                yield SourceImage(name, case_id(name, case + suffix),
                                  (os.path.join(images, f"{case}_{c:04d}{ending}"),))


def folder_images(folder: str, source: str) -> Iterator[SourceImage]:
    """Image files and DICOM series anywhere under ``folder``, in a stable order."""
    for directory, subdirs, files in os.walk(folder):
        subdirs.sort()
        relative_dir = os.path.relpath(directory, folder)
        images = [n for n in sorted(files) if not n.startswith(".") and n.lower().endswith(IMAGE_ENDINGS)]
        stems = Counter(file_stem(n) for n in images)
        for name in images:
            # scan_1.nii.gz and scan_1.mha are two images: the ending keeps their case ids apart
            unique = name if stems[file_stem(name)] == 1 else name.replace(".", "_")
            yield SourceImage(source, case_id(source, os.path.normpath(os.path.join(relative_dir, unique))),
                              (os.path.join(directory, name),))
        dicom_candidates = [n for n in sorted(files) if not n.startswith(".") and not n.lower().endswith(IMAGE_ENDINGS)
                            and os.path.splitext(n)[1].lower() in DICOM_ENDINGS]
        if dicom_candidates:
            in_series = set()
            for series in sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory):
                slices = tuple(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(directory, series))
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
        if os.path.isdir(item):
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
        second = sitk.ImageFileReader()
        second.SetFileName(files[1])
        try:
            second.ReadImageInformation()
        except RuntimeError as error:
            return None, f"unreadable slice {files[1]}: {str(error).strip().splitlines()[-1][:200]}"
        size[2] = len(files)
        spacing[2] = float(np.linalg.norm(np.subtract(second.GetOrigin(), reader.GetOrigin())))
    if reader.GetDimension() == 2 or (len(size) == 3 and min(size) == 1):
        return None, f"2D image (size {size})"
    if len(size) != 3:
        return None, f"{len(size)}D image (size {size}); only 3D volumes are used"
    low, high = SPACING_RANGE_MM
    if not all(np.isfinite(s) and low <= s <= high for s in spacing):
        return None, f"absurd spacing {[round(s, 4) for s in spacing]} mm (expected {low} to {high} mm)"
    return Header(tuple(size[::-1]), tuple(float(s) for s in spacing[::-1])), ""


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
    return data, properties

