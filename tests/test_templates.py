"""The example datasets' templates: the Colin27 lobe map on a synthetic atlas laid out like
mricron-data's files, and on the real one where it is installed; the `example-dataset` command;
the intensity-only ceiling that tells intensity-decided from context-decided labels."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mim.data import templates
from nnunet_mim.data.example import write_example_dataset


def write_volume(array, path):
    sitk.WriteImage(sitk.GetImageFromArray(array), path)


@pytest.fixture
def fake_mricron(tmp_path, monkeypatch):
    """A 20x20x40 'head': brain = the central box; AAL region 1 (a frontal code) in the low-x
    end, region 2 (a temporal code) in the high-x end, white matter (no AAL label) between."""
    aal = np.zeros((20, 20, 40), np.uint8)
    aal[8:12, 8:12, 4:8] = 1
    aal[8:12, 8:12, 32:36] = 2
    brain = np.zeros_like(aal)
    brain[2:18, 2:18, 2:38] = 1
    brain[10, 10, 20] = 0  # a hole (a ventricle ch2bet left out): filled
    write_volume(aal, str(tmp_path / "aal.nii.gz"))
    write_volume(brain * 100, str(tmp_path / "ch2bet.nii.gz"))
    write_volume(np.full_like(aal, 50), str(tmp_path / "ch2.nii.gz"))
    (tmp_path / "aal.nii.txt").write_text("1 Precentral_L 2001\n2 Temporal_Sup_L 8111\n\n")
    monkeypatch.setattr(templates, "MRICRON_TEMPLATES", str(tmp_path))
    return aal, brain


def test_lobe_map_assigns_each_brain_voxel_the_family_of_its_nearest_region(fake_mricron):
    aal, brain = fake_mricron
    lobes = templates.colin27_lobe_map()
    frontal = 1 + list(templates.AAL_FAMILIES).index(2)
    temporal = 1 + list(templates.AAL_FAMILIES).index(8)
    assert (lobes[aal == 1] == frontal).all() and (lobes[aal == 2] == temporal).all()
    outside = brain == 0
    outside[10, 10, 20] = False  # the filled hole
    assert (lobes[outside] == 0).all()
    # white matter: the nearer region decides (regions end at x=7 and start at x=32); the hole is brain
    assert (lobes[2:18, 2:18, 2:20] == frontal).all()
    assert (lobes[2:18, 2:18, 20:38] == temporal).all()
    assert set(np.unique(lobes)) == {0, frontal, temporal}


def test_colin27_example_dataset_labels_match_dataset_json(fake_mricron, tmp_path):
    written = write_example_dataset(str(tmp_path / "raw"), 995, num_train=2, num_test=1, spacing_mm=2.0,
                                    name="Fake", template="colin27-lobes")
    meta = json.load(open(os.path.join(written["folder"], "dataset.json")))
    assert meta["labels"] == {"background": 0, **{n: i + 1 for i, n in enumerate(templates.AAL_FAMILIES.values())}}
    assert "ONE subject" in meta["description"]
    assert sorted(os.listdir(os.path.join(written["folder"], "labelsTr"))) == ["colin_000.nii.gz", "colin_001.nii.gz"]
    label = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(written["folder"], "labelsTr", "colin_000.nii.gz")))
    assert set(np.unique(label)) <= set(meta["labels"].values())
    assert (label > 0).any()


def test_missing_mricron_data_is_named_and_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(templates, "MRICRON_TEMPLATES", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="apt-get install -y mricron-data"):
        write_example_dataset(str(tmp_path), 996, template="colin27-lobes")
    assert not os.path.exists(tmp_path / "Dataset996_MNIDemo")


def test_unknown_template_is_refused(tmp_path):
    with pytest.raises(ValueError, match="colin27-lobes"):
        write_example_dataset(str(tmp_path), 997, template="colin")


@pytest.mark.skipif(not os.path.isfile(os.path.join(templates.MRICRON_TEMPLATES, "aal.nii.gz")),
                    reason="Debian mricron-data is not installed (.ci/run installs it when apt can)")
def test_real_colin27_lobes_are_plausible():
    lobes = templates.colin27_lobe_map()
    volumes_ml = np.bincount(lobes.ravel(), minlength=len(templates.AAL_FAMILIES) + 1)[1:] / 1000  # 1 mm voxels
    assert (volumes_ml > 5).all(), volumes_ml  # every family present
    assert 1000 < volumes_ml.sum() < 2200, volumes_ml.sum()  # a brain in MNI space (Colin27: 1.88 l), in ml
    families = list(templates.AAL_FAMILIES.values())
    assert volumes_ml[families.index("frontal")] == volumes_ml.max()  # the largest lobe


def test_colin27_lobes_are_carried_to_another_grid_through_world_coordinates(fake_mricron):
    """A grid whose voxel (i, j, k) lies where Colin27's (i + 2, j, k) lies gets Colin27's class of that
    voxel; nibabel's axis order (x, y, z) is the reverse of SimpleITK's arrays."""
    import nibabel as nib
    lobes = templates.colin27_lobe_map().transpose(2, 1, 0)
    colin_affine = nib.load(os.path.join(templates.MRICRON_TEMPLATES, "aal.nii.gz")).affine
    shifted = colin_affine.copy()
    shifted[:3, 3] = colin_affine[:3, :3] @ [2, 0, 0] + colin_affine[:3, 3]
    carried = templates.colin27_lobes_on_grid(lobes.shape, shifted)
    assert (carried[:-2] == lobes[2:]).all()
    assert (carried[-2:] == 0).all()  # beyond Colin27's volume


@pytest.mark.skipif(not os.path.isfile(os.path.join(templates.MRICRON_TEMPLATES, "aal.nii.gz")),
                    reason="Debian mricron-data is not installed (.ci/run installs it when apt can)")
def test_real_mni152_lobes_fill_the_mni152_brain_and_colin27s_brain_lands_on_it():
    from nilearn import datasets
    t1_image = datasets.load_mni152_template(resolution=1)
    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=1).dataobj) > 0
    carried_brain = templates.colin27_lobes_on_grid(t1_image.shape, t1_image.affine) > 0
    # both heads lie in MNI space: a wrong axis order or affine would overlap far less
    assert 2 * (carried_brain & brain).sum() / (carried_brain.sum() + brain.sum()) > 0.9
    t1, lobes = templates.mni152_lobe_map()
    assert t1.shape == lobes.shape == brain.shape
    assert ((lobes > 0) == brain).all()
    volumes_ml = np.bincount(lobes.ravel(), minlength=len(templates.AAL_FAMILIES) + 1)[1:] / 1000
    assert (volumes_ml > 5).all(), volumes_ml


def test_example_dataset_command_writes_into_nnunet_raw_and_refuses_to_overwrite(fake_mricron, tmp_path, monkeypatch,
                                                                                 capsys):
    from nnunet_mim.cli import main
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "raw"))
    args = ["example-dataset", "998", "--template", "colin27-lobes", "--num-train", "2", "--spacing", "2"]
    assert main(args) == 0
    assert os.path.isfile(tmp_path / "raw" / "Dataset998_Colin27Lobes" / "dataset.json")
    assert "ONE subject" in capsys.readouterr().out
    assert main(args) == 1
    assert "refusing to overwrite" in capsys.readouterr().err


def test_intensity_only_ceiling_separates_intensity_from_position_labels(tmp_path):
    """benchmarks/intensity_only.py: labels that follow intensity score 1, labels that follow
    position only (one intensity everywhere in the foreground) score no better than one class."""
    import importlib.util
    spec = importlib.util.spec_from_file_location(
        "intensity_only", os.path.join(os.path.dirname(__file__), "..", "benchmarks", "intensity_only.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    intensity_only_dice = module.intensity_only_dice
    rng = np.random.default_rng(0)
    for name, by_intensity in (("Intensity", True), ("Position", False)):
        folder = tmp_path / name
        for sub in ("imagesTr", "labelsTr"):
            (folder / sub).mkdir(parents=True)
        for case in range(2):
            label = np.zeros((8, 8, 8), np.uint8)
            label[2:6, 2:6, 2:4], label[2:6, 2:6, 4:6] = 1, 2
            image = rng.normal(0, 0.01, label.shape) + (label if by_intensity else label > 0)
            write_volume(image.astype(np.float32), str(folder / "imagesTr" / f"c{case}_0000.nii.gz"))
            write_volume(label, str(folder / "labelsTr" / f"c{case}.nii.gz"))
        (folder / "dataset.json").write_text(json.dumps({"file_ending": ".nii.gz", "channel_names": {"0": "MR"},
                                                         "labels": {"background": 0, "left": 1, "right": 2}}))
        dice = intensity_only_dice(str(folder))["dice"]
        if by_intensity:
            assert dice["all voxels"]["mean"] == dice["foreground given"]["mean"] == 1.0
        else:
            assert dice["all voxels"]["mean"] <= 0.5 and dice["foreground given"]["mean"] <= 0.5
