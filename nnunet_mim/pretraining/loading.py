"""The pre-training trainers' data loaders: nnU-Net's own loader and transforms, cutting crops of
``crop_factor`` x the patch, cases drawn uniformly or per source (a collection's setting), and a validation
set of crops drawn once with a fixed seed (comparable between epochs)."""
import itertools
from typing import List, Optional, Sequence, Tuple

import numpy as np
from batchgenerators.dataloading.nondet_multi_threaded_augmenter import NonDetMultiThreadedAugmenter
from batchgenerators.dataloading.single_threaded_augmenter import SingleThreadedAugmenter
from batchgeneratorsv2.transforms.spatial.mirroring import MirrorTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.pseudo2d import Convert2DTo3DTransform, Convert3DTo2DTransform
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size
from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
from nnunetv2.utilities.default_n_proc_DA import get_allowed_n_proc_DA

VALIDATION_SEED = 12345
AUGMENTATIONS = ("none", "intensity", "spatial+intensity")
SPATIAL_TRANSFORMS = (SpatialTransform, MirrorTransform, Convert3DTo2DTransform, Convert2DTo3DTransform)


def crop_augmentation(trainer, crop: List[int]) -> Tuple[List[int], Optional[object]]:
    """(size to cut, transforms) for ``trainer.augmentation``: nnU-Net's own training transforms of ``trainer``
    on the crops, all of them ("spatial+intensity"), only the intensity ones ("intensity"), or none ("none")."""
    if trainer.augmentation == "none":
        return crop, None
    if trainer.augmentation not in AUGMENTATIONS:
        raise ValueError(f"augmentation {trainer.augmentation!r}: choose one of {AUGMENTATIONS}")
    rotation, dummy_2d, _, mirror_axes = trainer.configure_rotation_dummyDA_mirroring_and_inital_patch_size()
    transforms = trainer.get_training_transforms(crop, rotation, None, mirror_axes, dummy_2d,
                                                 trainer.configuration_manager.use_mask_for_norm)
    if trainer.augmentation == "intensity":
        transforms.transforms = [t for t in transforms.transforms if not isinstance(t, SPATIAL_TRANSFORMS)]
        return crop, transforms
    # cut more than the crop, so that rotation and scaling find image content at the corners
    initial = [int(s) for s in get_patch_size(crop, rotation, rotation, rotation, (0.85, 1.25))]
    if dummy_2d:
        initial[0] = crop[0]
    return initial, transforms


def training_loader(dataset, crop: List[int], transforms, probabilities: Optional[Sequence[float]],
                    pin_memory: bool, **loader):
    """nnU-Net's loader of ``crop``-sized crops (``loader``: its batch size, final crop, labels, oversampling), in
    nnU-Net's background processes unless nnUNet_n_proc_DA is 0."""
    crops = nnUNetDataLoader(dataset, patch_size=crop, transforms=transforms, sampling_probabilities=probabilities,
                             **loader)
    processes = get_allowed_n_proc_DA()
    if processes == 0:
        return SingleThreadedAugmenter(crops, None)
    return NonDetMultiThreadedAugmenter(crops, None, processes, max(6, processes // 2), None, pin_memory=pin_memory,
                                        wait_time=0.002)


def fixed_validation_batches(dataset, crop: List[int], batches: int, **loader):
    """The same ``batches`` batches of crops every epoch, drawn once with VALIDATION_SEED (numpy's global state,
    which nnU-Net's loader draws from, is restored afterwards)."""
    state = np.random.get_state()
    np.random.seed(VALIDATION_SEED)
    crops = nnUNetDataLoader(dataset, patch_size=crop, transforms=None, **loader)
    drawn = [next(crops) for _ in range(batches)]
    np.random.set_state(state)
    return itertools.cycle(drawn)
