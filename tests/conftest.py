import pytest


@pytest.fixture
def example_plans():
    """A minimal anisotropic nnU-Net plan (the shape of a real plans.json, trimmed)."""
    return {
        "dataset_name": "Dataset001_Test", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [3.0, 0.8, 0.8], "image_reader_writer": "SimpleITKIO",
        "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {},
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
            "batch_size": 2, "patch_size": [40, 224, 192], "median_image_size_in_voxels": [80, 400, 400],
            "spacing": [3.0, 0.8, 0.8], "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": {"strides": [[1, 1, 1], [1, 2, 2], [2, 2, 2]]},
                             "_kw_requires_import": []},
            "batch_dice": False}},
    }
