"""Pre-training collections: two nnU-Net datasets with different spacings + a folder of unlabeled
images (NIfTI, NRRD, a DICOM series, a corrupt file, a 2D image, an image smaller than the patch that
the trainers pad, one under half the patch that would be mostly padding)
-> one preprocessed dataset; a rerun does no work; MiM pre-training runs on it via nnUNetv2_train.
"""
import hashlib
import sys
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

from helpers import nnunet_mim_in_process, nnunet_train_in_process, run
from nnunet_mim.data.phantom import ct_phantom
from nnunet_mim.pretraining.data import sampling_probabilities

COLLECTION_ID, NAME = 801, "PretrainCT"


def write_image(array, spacing_zyx, filename):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(list(spacing_zyx)[::-1])
    sitk.WriteImage(image, filename)


def write_dicom_series(array, spacing_zyx, folder):
    os.makedirs(folder)
    series_uid = "1.2.826.0.1.3680043.2.1125.1.42"
    for z in range(array.shape[0]):
        image = sitk.GetImageFromArray(array[z:z + 1])
        image.SetSpacing([spacing_zyx[2], spacing_zyx[1], spacing_zyx[0]])
        image.SetOrigin([0.0, 0.0, z * spacing_zyx[0]])
        for tag, value in {"0008|0060": "CT", "0020|000e": series_uid, "0020|000d": series_uid + ".0",
                           "0020|0013": str(z + 1), "0020|0032": f"0\\0\\{z * spacing_zyx[0]}",
                           "0020|0037": "1\\0\\0\\0\\1\\0", "0028|0030": f"{spacing_zyx[1]}\\{spacing_zyx[2]}",
                           "0018|0050": str(spacing_zyx[0])}.items():
            image.SetMetaData(tag, value)
        writer = sitk.ImageFileWriter()
        writer.KeepOriginalImageUIDOn()
        writer.SetFileName(os.path.join(folder, f"slice{z:03d}.dcm"))
        writer.Execute(image)


def write_raw_dataset(raw, dataset_id, name, shapes, spacing, rng):
    folder = os.path.join(raw, f"Dataset{dataset_id}_{name}")
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        os.makedirs(os.path.join(folder, sub))
    for i, shape in enumerate(shapes):
        split = "Ts" if i == len(shapes) - 1 else "Tr"
        image = ct_phantom(shape, rng)
        write_image(image, spacing, os.path.join(folder, f"images{split}", f"case_{i:03d}_0000.nii.gz"))
        if split == "Tr":
            write_image((image > 0).astype(np.uint8), spacing, os.path.join(folder, "labelsTr", f"case_{i:03d}.nii.gz"))
    with open(os.path.join(folder, "dataset.json"), "w") as f:
        json.dump({"channel_names": {"0": "CT"}, "labels": {"background": 0, "body": 1},
                   "numTraining": len(shapes) - 1, "file_ending": ".nii.gz"}, f)


def tree_digest(folder):
    digest = hashlib.sha256()
    for directory, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            path = os.path.join(directory, name)
            digest.update(os.fsencode(path))
            if os.path.isfile(path):  # not the FIFO, which would wait for a writer
                with open(path, "rb") as f:
                    digest.update(f.read())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def sources(tmp_path_factory, nnunet_env):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("sources")
    raw = nnunet_env["nnUNet_raw"]
    write_raw_dataset(raw, 811, "ChestA", [(30, 40, 40)] * 3, (4.0, 3.0, 3.0), rng)
    write_raw_dataset(raw, 812, "AbdomenB", [(64, 56, 56)] * 2, (2.0, 2.5, 2.5), rng)
    unlabeled = root / "unlabeled_ct"
    os.makedirs(unlabeled / "scans")
    write_image(ct_phantom((40, 40, 40), rng), (3.0, 3.0, 3.0), str(unlabeled / "scans" / "scan_a.nii.gz"))
    write_image(ct_phantom((36, 48, 48), rng), (3.5, 2.5, 2.5), str(unlabeled / "scans" / "scan_b.nrrd"))
    write_dicom_series(ct_phantom((40, 44, 44), rng), (3.0, 2.8, 2.8), str(unlabeled / "dicom" / "series1"))
    with open(unlabeled / "scans" / "broken.nii.gz", "wb") as f:
        f.write(b"this is not an image" * 10)
    write_image(ct_phantom((1, 64, 64), rng), (3.0, 1.0, 1.0), str(unlabeled / "scans" / "slice2d.nii.gz"))
    write_image(ct_phantom((10, 10, 10), rng), (1.0, 1.0, 1.0), str(unlabeled / "scans" / "tiny.mha"))
    write_image(ct_phantom((18, 40, 40), rng), (3.0, 3.0, 3.0), str(unlabeled / "scans" / "thin.nii.gz"))
    # what SimpleITK reads without an error, and the builder must not keep (issue 55)
    write_image(ct_phantom((40, 40, 40), rng), (3.0, 3.0, 3.0), str(unlabeled / "scans" / "scan_a.mha"))  # same stem
    complete = (unlabeled / "scans" / "scan_a.nii.gz").read_bytes()
    (unlabeled / "scans" / "truncated.nii.gz").write_bytes(complete[:len(complete) // 2])
    with_nan = ct_phantom((40, 40, 40), rng).astype(np.float32)
    write_image(with_nan, (3.0, 3.0, 3.0), str(unlabeled / "scans" / "nan.nii"))
    stored = bytearray((unlabeled / "scans" / "nan.nii").read_bytes())  # ITK's writer would not keep a NaN
    stored[352 + 4 * 100:352 + 4 * 101] = np.float32(np.nan).tobytes()  # voxel 100, after the 352-byte header
    (unlabeled / "scans" / "nan.nii").write_bytes(bytes(stored))
    with_nan[5, 5, 5] = np.inf
    write_image(with_nan, (3.0, 3.0, 3.0), str(unlabeled / "scans" / "inf.mha"))
    write_image(ct_phantom((40, 40, 40), rng), (3.0, 3.0, 3.0), str(unlabeled / "scans" / "pixdim0.nii"))
    header = bytearray((unlabeled / "scans" / "pixdim0.nii").read_bytes())
    header[80:84] = np.float32(0).tobytes()  # pixdim[1]: no voxel size on x
    (unlabeled / "scans" / "pixdim0.nii").write_bytes(bytes(header))
    os.makedirs(unlabeled / "dicom" / "corrupt")
    for z in range(3):
        (unlabeled / "dicom" / "corrupt" / f"bad{z:03d}.dcm").write_bytes(b"DICM" + bytes(200))
    # the probe of issue 61: what hung, aborted or was kept wrongly
    os.mkfifo(unlabeled / "scans" / "pipe.nii.gz")  # a FIFO: reading it waits forever
    os.mkfifo(unlabeled / "dicom" / "series1" / "pipe")  # one beside a DICOM series, where GDCM would read it
    write_image(ct_phantom((40, 40, 40), rng), (3.0, 3.0, 3.0), str(unlabeled / "scans" / "latin1.nii.gz"))
    latin1_name = os.path.join(os.fsencode(unlabeled / "scans"), b"scan_\xe9.nii.gz")  # not UTF-8
    os.rename(unlabeled / "scans" / "latin1.nii.gz", latin1_name)
    write_image(np.full((40, 40, 40), -1000, np.int16), (3.0, 3.0, 3.0), str(unlabeled / "scans" / "blank.nii.gz"))
    os.symlink(unlabeled / "scans" / "scan_a.nii.gz", unlabeled / "scans" / "zz_alias_of_a.nii.gz")
    os.makedirs(unlabeled / "copied_dataset" / "labelsTr")
    write_image((ct_phantom((40, 40, 40), rng) > 0).astype(np.uint8), (3.0, 3.0, 3.0),
                str(unlabeled / "copied_dataset" / "labelsTr" / "case_000.nii.gz"))
    gapped = ct_phantom((40, 44, 44), rng)
    write_dicom_series(gapped, (3.0, 2.8, 2.8), str(unlabeled / "dicom" / "missing_slice"))
    os.remove(unlabeled / "dicom" / "missing_slice" / "slice020.dcm")
    write_image(ct_phantom((4, 4, 4), rng), (3.0, 3.0, 3.0), str(unlabeled / "scans" / "header_bomb.nii"))
    bomb = bytearray((unlabeled / "scans" / "header_bomb.nii").read_bytes())
    bomb[42:48] = np.array([2000, 2000, 2000], "<i2").tobytes()  # dim[1:4]: 8e9 voxels claimed by a 600-byte file
    (unlabeled / "scans" / "header_bomb.nii").write_bytes(bytes(bomb))
    return {"unlabeled": str(unlabeled), "raw": raw}


def create(env, *extra):
    return nnunet_mim_in_process(["pretrain-dataset", "create", "-d", str(COLLECTION_ID), "-n", NAME,
                "-i", "811", "Dataset812_AbdomenB", *extra, "--spacing", "3", "3", "3", "--patch-size", "32", "32",
                "32", "--sampling", "per_source", "-np", "2"], env)


@pytest.fixture(scope="module")
def collection(nnunet_env, sources):
    before = tree_digest(sources["unlabeled"]), tree_digest(sources["raw"])
    # Dataset811 a second time, by its folder: the same images, skipped as such
    first = create(nnunet_env, sources["unlabeled"], os.path.join(sources["raw"], "Dataset811_ChestA"))
    folder = os.path.join(nnunet_env["nnUNet_preprocessed"], f"Dataset{COLLECTION_ID}_{NAME}")
    after = tree_digest(sources["unlabeled"]), tree_digest(sources["raw"])
    return {"folder": folder, "stdout": first.stdout, "sources_unchanged": before == after}


def manifest_of(folder):
    with open(os.path.join(folder, "pretraining_collection.json")) as f:
        return json.load(f)


def test_collection_reports_and_skips_bad_images(collection):
    manifest = manifest_of(collection["folder"])
    cases = {os.path.basename(c["files"][0]) if len(c["files"]) == 1 else "dicom": c for c in manifest["cases"]
             if c["source"] == "unlabeled_ct"}
    assert cases["broken.nii.gz"]["status"] == "skipped" and "unreadable" in cases["broken.nii.gz"]["reason"]
    assert cases["slice2d.nii.gz"]["status"] == "skipped" and "2D" in cases["slice2d.nii.gz"]["reason"]
    assert cases["tiny.mha"]["status"] == "skipped" and "less than half the patch" in cases["tiny.mha"]["reason"]
    assert cases["thin.nii.gz"]["status"] == "done"  # 18 slices for a 32-voxel patch: padded, as nnU-Net does
    assert cases["truncated.nii.gz"]["status"] == "skipped" and "truncated" in cases["truncated.nii.gz"]["reason"]
    for name in ("nan.nii", "inf.mha"):
        assert cases[name]["status"] == "skipped" and "1 of 64000 voxels are NaN or infinite" in cases[name]["reason"]
    assert cases["pixdim0.nii"]["status"] == "skipped" and "no voxel size" in cases["pixdim0.nii"]["reason"]
    for z in range(3):  # a corrupt DICOM series: every file named, with why
        assert cases[f"bad{z:03d}.dcm"]["status"] == "skipped" and "unreadable" in cases[f"bad{z:03d}.dcm"]["reason"]
    # scan_a.nii.gz and scan_a.mha: two images, two case ids, both kept
    assert cases["scan_a.nii.gz"]["status"] == cases["scan_a.mha"]["status"] == "done"
    assert cases["scan_a.nii.gz"]["case_id"] != cases["scan_a.mha"]["case_id"]
    done = sorted(c["case_id"] for c in manifest["cases"] if c["status"] == "done")
    # 3 + 2 cases of the nnU-Net datasets (imagesTr and imagesTs), 4 files and 1 DICOM series
    assert len(done) == len(set(done)) == 10, done
    # every count agrees: manifest, summary, dataset.json, the preprocessed cases
    with open(os.path.join(collection["folder"], "dataset.json")) as f:
        assert json.load(f)["numTraining"] == manifest["summary"]["done"] == len(done)
    cases_on_disk = [f for f in os.listdir(os.path.join(collection["folder"], "nnUNetPlans_3d_fullres"))
                     if f.endswith(".b2nd")]
    assert len(cases_on_disk) == len(done)
    assert manifest["summary"]["found"] == len(manifest["cases"]) == (manifest["summary"]["done"] +
                                                                      manifest["summary"]["skipped"] +
                                                                      manifest["summary"]["failed"])
    for problem in ("broken.nii.gz", "slice2d.nii.gz", "tiny.mha", "truncated.nii.gz", "nan.nii", "inf.mha",
                    "pixdim0.nii", "bad000.dcm"):
        assert problem in collection["stdout"]
    assert collection["sources_unchanged"]


def test_what_hung_aborted_or_was_kept_wrongly_is_skipped_with_its_reason(collection):
    """Issue 61's probe: a FIFO (the build waited forever), a file name that is not UTF-8 (the build aborted), a
    blank volume, one image reached twice (a link; a dataset given by ID and by folder), label maps in a folder,
    a DICOM series with a missing slice, a header that claims billions of voxels: each one line of the manifest."""
    manifest = manifest_of(collection["folder"])
    by_file = {c["files"][0]: c for c in manifest["cases"] if len(c["files"]) == 1}
    reason = {os.path.basename(path): c["reason"] for path, c in by_file.items() if c["status"] == "skipped"}
    assert "not a regular file" in reason["pipe.nii.gz"] and "not a regular file" in reason["pipe"]
    assert "not valid UTF-8" in reason["scan_\\xe9.nii.gz"]
    assert "every voxel is -1000: a blank volume" in reason["blank.nii.gz"]
    assert reason["zz_alias_of_a.nii.gz"].startswith("the same file(s) as unlabeled_ct__scans_scan_a")
    assert "a label map (labelsTr of an nnU-Net dataset)" in reason["case_000.nii.gz"]
    assert "claims 2000x2000x2000 voxels" in reason["header_bomb.nii"]
    series = [c for c in manifest["cases"] if "missing_slice" in c["case_id"] or
              (len(c["files"]) > 1 and "missing_slice" in c["files"][0])]
    assert len(series) == 1 and series[0]["status"] == "skipped"
    assert "not evenly spaced" in series[0]["reason"] and "missing or duplicated slice" in series[0]["reason"]
    by_folder = [c for c in manifest["cases"] if c["files"][0].startswith(os.path.join(
        os.path.dirname(os.path.dirname(c["files"][0])), "imagesTr")) and c["source"] == "Dataset811_ChestA"]
    assert by_folder and all(c["status"] in ("done", "skipped") for c in by_folder)
    chest = [c for c in manifest["cases"] if c["source"] == "Dataset811_ChestA"]
    assert sum(c["status"] == "done" for c in chest) == 3 and len(chest) == 6  # given twice, kept once


def test_collection_is_an_images_only_nnunet_dataset(collection):
    import blosc2
    folder = collection["folder"]
    images = os.path.join(folder, "nnUNetPlans_3d_fullres")
    files = os.listdir(images)
    assert not any("_seg" in f or f.endswith(".partial") for f in files), files  # no label invented
    with open(os.path.join(folder, "nnUNetPlans.json")) as f:
        plans = json.load(f)
    config = plans["configurations"]["3d_fullres"]
    assert config["spacing"] == [3.0, 3.0, 3.0] and config["patch_size"] == [32, 32, 32]
    assert config["normalization_schemes"] == ["CTNormalization"]
    assert plans["foreground_intensity_properties_per_channel"]["0"]["percentile_00_5"] == -1000
    with open(os.path.join(folder, "dataset.json")) as f:
        assert json.load(f)["labels"] == {"background": 0}
    # the DICOM series: 40 slices at 3 mm stay 40 at 3 mm; 44 pixels at 2.8 mm become 41 at 3 mm
    dicom = [f for f in files if "series" in f.lower() or "1.2.826" in f]
    data = blosc2.open(os.path.join(images, [f for f in dicom if f.endswith(".b2nd")][0]), mode="r")[:]
    assert data.shape == (1, 40, 41, 41)
    assert data.min() >= -1.0 and data.max() <= 1.0  # the CT window [-1000, 1000] mapped to [-1, 1]
    assert data.min() < -0.9 and data.max() > 0.7   # air and bone both present


def test_rerun_does_no_work(nnunet_env, sources, collection):
    images = os.path.join(collection["folder"], "nnUNetPlans_3d_fullres")
    stamps = {f: os.stat(os.path.join(images, f)).st_mtime_ns for f in os.listdir(images)}
    create(nnunet_env, sources["unlabeled"])
    summary = manifest_of(collection["folder"])["summary"]
    assert summary["processed_now"] == 0 and summary["already_done"] == 10 and summary["done"] == 10
    assert stamps == {f: os.stat(os.path.join(images, f)).st_mtime_ns for f in os.listdir(images)}


def test_rerun_with_other_settings_is_refused(nnunet_env, sources, collection):
    result = nnunet_mim_in_process(["pretrain-dataset", "create", "-d", str(COLLECTION_ID), "-n", NAME, "-i", "811",
                  "--spacing", "2", "2", "2", "--patch-size", "32", "32", "32"], nnunet_env, check=False)
    assert result.returncode != 0 and "other settings" in result.stderr
    result = nnunet_mim_in_process(["pretrain-dataset", "create", "-d", str(COLLECTION_ID), "-n", NAME, "-i", "811",
                  "--no-test-images"], nnunet_env, check=False)
    assert result.returncode != 0 and "test_images: stored True, given False" in result.stderr


def test_an_interrupted_collection_is_continued(nnunet_env, sources, collection):
    """As a kill leaves it: one image never written (its properties and a partial file were)."""
    images = os.path.join(collection["folder"], "nnUNetPlans_3d_fullres")
    victim = sorted(f for f in os.listdir(images) if f.endswith(".b2nd"))[0]
    os.replace(os.path.join(images, victim), os.path.join(images, victim + ".partial"))
    create(nnunet_env, sources["unlabeled"])
    summary = manifest_of(collection["folder"])["summary"]
    assert summary["processed_now"] == 1 and summary["already_done"] == 9 and summary["done"] == 10
    assert os.path.isfile(os.path.join(images, victim))


def test_a_manifest_of_a_newer_format_is_refused_and_kept(nnunet_env, collection):
    path = os.path.join(collection["folder"], "pretraining_collection.json")
    original = manifest_of(collection["folder"])
    assert original["format"] == 1
    newer = dict(original, format=2, settings={**original["settings"], "a_later_setting": True})
    with open(path, "w") as f:
        json.dump(newer, f)
    try:
        result = nnunet_mim_in_process(["pretrain-dataset", "create", "-d", str(COLLECTION_ID), "-n", NAME, "-i",
                                        "811"], nnunet_env, check=False)
        assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
        assert "is a manifest of format 2; this nnunet-mim reads format 1: upgrade nnunet-mim" in result.stderr
        assert manifest_of(collection["folder"]) == newer
    finally:
        with open(path, "w") as f:
            json.dump(original, f)


def test_a_taken_dataset_id_is_refused_naming_the_dataset_plainly(nnunet_env, sources):
    result = nnunet_mim_in_process(["pretrain-dataset", "create", "-d", "811", "-n", "Other", "-i",
                                    sources["unlabeled"]], nnunet_env, check=False)
    assert result.returncode == 1 and "dataset ID 811 is taken by ['Dataset811_ChestA']" in result.stderr, \
        result.stderr  # not [np.str_('Dataset811_ChestA')]
    assert not os.path.exists(os.path.join(nnunet_env["nnUNet_preprocessed"], "Dataset811_Other"))


def test_rerun_without_an_earlier_input_is_refused(nnunet_env, collection):
    result = nnunet_mim_in_process(["pretrain-dataset", "create", "-d", str(COLLECTION_ID), "-n", NAME, "-i", "811"],
                 nnunet_env, check=False)
    assert result.returncode != 0 and "come from no input of this run" in result.stderr


def test_test_images_can_be_left_out(nnunet_env, collection):
    nnunet_mim_in_process(["pretrain-dataset", "create", "-d", "803", "-n", "TrainOnly", "-i", "811",
                           "--no-test-images", "--spacing", "3", "3", "3", "--patch-size", "32", "32", "32"],
                          nnunet_env)
    folder = os.path.join(nnunet_env["nnUNet_preprocessed"], "Dataset803_TrainOnly")
    cases = manifest_of(folder)["cases"]
    assert len(cases) == 2 and all("/imagesTr/" in c["files"][0] for c in cases)
    # a rerun without the flag keeps the first run's choice instead of adding the test images
    nnunet_mim_in_process(["pretrain-dataset", "create", "-d", "803", "-n", "TrainOnly", "-i", "811"], nnunet_env)
    manifest = manifest_of(folder)
    assert len(manifest["cases"]) == 2 and manifest["summary"]["processed_now"] == 0


def test_per_source_sampling_balances_sources(collection):
    manifest = manifest_of(collection["folder"])
    identifiers = [c["case_id"] for c in manifest["cases"] if c["status"] == "done"]
    p = sampling_probabilities(identifiers, manifest)
    per_source = {}
    for identifier, probability in zip(identifiers, p):
        source = next(c["source"] for c in manifest["cases"] if c["case_id"] == identifier)
        per_source[source] = per_source.get(source, 0) + probability
    assert sorted(per_source) == ["Dataset811_ChestA", "Dataset812_AbdomenB", "unlabeled_ct"]
    assert np.allclose(list(per_source.values()), 1 / 3)
    manifest["settings"]["sampling"] = "uniform"
    assert sampling_probabilities(identifiers, manifest) is None


def test_mim_pretraining_runs_on_the_collection(nnunet_env, collection):
    trained = nnunet_train_in_process([str(COLLECTION_ID), "3d_fullres", "all", "-tr",
                                       "nnUNetTrainerMiMPretrain_T_CPUsmoke", "-device", "cpu"], nnunet_env)
    assert trained.returncode == 0, trained.stderr[-3000:]
    folder = os.path.join(nnunet_env["nnUNet_results"], f"Dataset{COLLECTION_ID}_{NAME}",
                          "nnUNetTrainerMiMPretrain_T_CPUsmoke__nnUNetPlans__3d_fullres", "fold_all")
    assert os.path.isfile(os.path.join(folder, "checkpoint_final.pth"))


def test_finetuning_elsewhere_warns_about_other_normalisation(nnunet_env, collection):
    """Pre-trained on the CT collection (fixed window), fine-tuned on the MR example (z-score):
    the weights load through stock -pretrained_weights and the run says the intensities differ."""
    pretrained = os.path.join(nnunet_env["nnUNet_results"], f"Dataset{COLLECTION_ID}_{NAME}",
                              "nnUNetTrainerMiMPretrain_T_CPUsmoke__nnUNetPlans__3d_fullres", "fold_all",
                              "checkpoint_final.pth")
    if not os.path.isfile(pretrained):
        pytest.skip("needs test_mim_pretraining_runs_on_the_collection")
    result = nnunet_train_in_process(["991", "3d_fullres", "0", "-tr", "nnUNetTrainerMiMFinetune_T_CPUsmoke",
                                      "-device", "cpu", "-pretrained_weights", pretrained], nnunet_env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "normalised differently" in result.stdout + result.stderr
    assert "clip to [-1000, 1000]" in result.stdout


LOADER_SCRIPT = """
import json, sys, torch
from nnunetv2.run.run_training import get_trainer_from_args
from nnunet_mim.pretraining.loading import SPATIAL_TRANSFORMS
out = {}
for augmentation in ("none", "intensity", "spatial+intensity"):
    trainer = get_trainer_from_args("801", "3d_fullres", "all", "nnUNetTrainerMiMPretrain_T_CPUsmoke",
                                    device=torch.device("cpu"))
    trainer.augmentation = augmentation
    trainer.oversample_foreground_percent = 1.0
    trainer.initialize()
    train, _ = trainer.get_dataloaders()
    loader = train.data_loader
    batch = next(train)
    transforms = [] if loader.transforms is None else loader.transforms.transforms
    out[augmentation] = {"shape": list(batch["data"].shape), "cut": list(loader.patch_size),
                         "spatial": sum(isinstance(t, SPATIAL_TRANSFORMS) for t in transforms),
                         "transforms": len(transforms), "oversample": loader.oversample_foreground_percent}
print("RESULT" + json.dumps(out))
"""


def test_body_locations_lie_in_the_body(collection):
    import pickle
    import blosc2
    images = os.path.join(collection["folder"], "nnUNetPlans_3d_fullres")
    case = sorted(f for f in os.listdir(images) if f.endswith(".pkl"))[0]
    with open(os.path.join(images, case), "rb") as f:
        locations = pickle.load(f)["class_locations"][1]
    data = blosc2.open(os.path.join(images, case[:-4] + ".b2nd"), mode="r")[:]
    assert len(locations) > 100
    values = data[tuple(np.asarray(locations).T)]
    assert np.all(values > -0.5)  # -500 HU in the [-1000, 1000] window: air excluded
    assert (data < -0.5).mean() > 0.2  # the phantom has air to exclude


def test_crop_augmentation_and_body_biased_crops(nnunet_env, collection):
    result = run([sys.executable, "-c", LOADER_SCRIPT], nnunet_env)
    out = json.loads(result.stdout.split("RESULT")[-1])
    for augmentation, o in out.items():
        assert o["shape"] == [2, 1, 64, 64, 64] and o["oversample"] == 1.0, (augmentation, o)
    assert out["none"]["transforms"] == 0 and out["none"]["cut"] == [64, 64, 64]
    assert out["intensity"]["spatial"] == 0 and out["intensity"]["transforms"] > 3
    assert out["intensity"]["cut"] == [64, 64, 64]
    assert out["spatial+intensity"]["spatial"] >= 2  # nnU-Net's SpatialTransform and MirrorTransform
    assert all(c > 64 for c in out["spatial+intensity"]["cut"])  # room for rotation and scaling


def test_patch_larger_than_every_image_is_refused(collection):
    from nnunet_mim.pretraining.data import ImagesOnlyDataset, check_images_fit
    images = os.path.join(collection["folder"], "nnUNetPlans_3d_fullres")
    dataset = ImagesOnlyDataset(images, ImagesOnlyDataset.get_identifiers(images))
    check_images_fit(dataset, [32, 32, 32])
    with pytest.raises(RuntimeError, match="does not fit the images"):
        check_images_fit(dataset, [32, 32, 128])


def test_planning_rules():
    from nnunet_mim.data.collection import default_patch_size, nnunet_target_spacing
    # about 96^3 voxels of equal physical extent, multiples of 32, no larger than the median image
    assert default_patch_size([2.0, 1.0, 1.0], [400, 400, 400]) == [64, 128, 128]
    assert default_patch_size([1.0, 1.0, 1.0], [50, 400, 400]) == [32, 96, 96]
    # nnU-Net's rule: median spacing, but the 10th percentile on a strongly anisotropic axis
    spacings = np.array([[5.0, 0.8, 0.8]] * 8 + [[1.5, 0.8, 0.8]] * 2)
    shapes = np.array([[30, 512, 512]] * 10)
    assert nnunet_target_spacing(spacings, shapes)[0] < 5.0
    assert nnunet_target_spacing(np.ones((10, 3)), shapes) == [1.0, 1.0, 1.0]


def test_like_takes_the_patch_mae_and_finetuning_use_there(tmp_path, monkeypatch, example_plans):
    """--like DATASET: its spacing and its patch rounded down to whole tokens (what MAE and fine-tuning
    train at on that dataset); MiM's trainer rounds the collection's patch down to 32 itself, as it
    does on the dataset; a patch of partial tokens is refused."""
    import nnunetv2.paths
    from nnunet_mim.data.collection import CollectionSettings, plan_collection
    from nnunet_mim.masking import LevelConfig
    from nnunet_mim.plans import adapt_plans
    target = tmp_path / "Dataset901_Target"
    target.mkdir()
    example_plans["configurations"]["3d_fullres"].update(patch_size=[56, 48, 40], spacing=[4.0, 4.0, 4.0])
    (target / "nnUNetPlans.json").write_text(json.dumps(example_plans))
    monkeypatch.setattr(nnunetv2.paths, "nnUNet_preprocessed", str(tmp_path))
    entries = [{"status": "pending", "shape": [60, 60, 60], "spacing": [2.0, 2.0, 2.0]}]
    like = CollectionSettings(like_dataset="Dataset901_Target")
    plans, _, _ = plan_collection("Dataset902_Collection", entries, like)
    config = plans["configurations"]["3d_fullres"]
    assert config["spacing"] == [4.0, 4.0, 4.0] and config["patch_size"] == [48, 48, 32]
    for levels, patch in ((LevelConfig(num_levels=1), [48, 48, 32]), (LevelConfig(), [32, 32, 32])):
        adapted = adapt_plans(plans, "3d_fullres", "T", levels.patch_multiple)
        assert adapted["configurations"]["3d_fullres"]["patch_size"] == patch
    with pytest.raises(ValueError, match="multiple of 16"):
        plan_collection("Dataset902_Collection", entries, CollectionSettings(patch_size=[40, 48, 48]))
