"""finetuning/checkpoint.py on small synthetic checkpoints (on real ones: tests/test_end_to_end.py)."""
import os
import signal

import pytest
import torch

from nnunet_mim.checkpointing import read_checkpoint
from nnunet_mim.finetuning.checkpoint import transplant_encoder
from nnunet_mim.pretraining_record import PretrainingRecord


def pretraining_checkpoint(width: int = 4) -> dict:
    record = PretrainingRecord("MAE", "T", False, 1, (32, 32, 32), (1.0, 1.0, 1.0), 100)
    encoder = {"stem.0.weight": torch.zeros(width, 1), "stages.0.w": torch.zeros(width)}
    weights = {**{"encoder." + k: v for k, v in encoder.items()},
               **{"decoder.encoder." + k: v.clone() for k, v in encoder.items()},
               "decoder.stages.0.w": torch.zeros(3), "reconstruction.w": torch.zeros(2),
               "pretraining_record": record.to_tensor()}
    return {"network_weights": weights, "nnunet_mim": {"method": "MAE", "patch_size": [32, 32, 32]}}


def segmentation_checkpoint(width: int = 4) -> dict:
    weights = {k: torch.ones_like(v) for k, v in pretraining_checkpoint(width)["network_weights"].items()
               if not k.startswith("reconstruction")}
    weights["decoder.seg_layers.0.weight"] = torch.ones(2, 3)
    weights["pretraining_record"] = torch.zeros(16, dtype=torch.float64)  # trained from scratch
    configuration = {"patch_size": [64, 64, 48], "spacing": [1.5, 1.5, 2.0], "normalization_schemes": ["ZScore"]}
    return {"network_weights": weights, "current_epoch": 30, "trainer_name": "nnUNetTrainerMiMScratch_T_CPUxlong",
            "init_args": {"configuration": "3d_fullres",
                          "plans": {"configurations": {"3d_fullres": configuration},
                                    "foreground_intensity_properties_per_channel": {"0": {"mean": 1.0}}}}}


def test_the_encoder_comes_from_the_segmentation_model_and_the_rest_stays():
    checkpoint = pretraining_checkpoint()
    replaced = transplant_encoder(checkpoint, segmentation_checkpoint())
    weights = checkpoint["network_weights"]
    assert sorted(replaced) == sorted(k for k in weights if k.startswith(("encoder.", "decoder.encoder.")))
    assert all(weights[k].eq(1).all() for k in replaced)
    assert weights["decoder.stages.0.w"].eq(0).all() and weights["reconstruction.w"].eq(0).all()
    assert "decoder.seg_layers.0.weight" not in weights
    record = PretrainingRecord.from_tensor(weights["pretraining_record"])
    assert (record.method, record.preset, record.epochs) == ("supervised", "T", 30)
    assert record.patch_size == (64, 64, 48) and record.spacing == (1.5, 1.5, 2.0)
    assert checkpoint["nnunet_mim"]["encoder_from"] == "nnUNetTrainerMiMScratch_T_CPUxlong"


def test_an_encoder_that_does_not_fit_is_refused_and_nothing_changes():
    checkpoint = pretraining_checkpoint()
    with pytest.raises(RuntimeError, match="does not fit.*4 differently shaped"):
        transplant_encoder(checkpoint, segmentation_checkpoint(width=8))
    assert all(v.eq(0).all() for k, v in checkpoint["network_weights"].items() if k != "pretraining_record")
    not_pretraining = segmentation_checkpoint()
    with pytest.raises(RuntimeError, match="not an nnunet-mim pre-training checkpoint"):
        transplant_encoder(not_pretraining, segmentation_checkpoint())
    pretraining_as_source = dict(segmentation_checkpoint(), nnunet_mim={"method": "MiM"})
    with pytest.raises(RuntimeError, match="not the checkpoint of an nnU-Net segmentation run"):
        transplant_encoder(checkpoint, pretraining_as_source)
    assert all(v.eq(0).all() for k, v in checkpoint["network_weights"].items() if k != "pretraining_record")


def test_adapt_checkpoint_refuses_by_name_and_writes_nothing(tmp_path, capsys):
    from nnunet_mim.cli import main
    pretraining, wider = str(tmp_path / "pretraining.pth"), str(tmp_path / "wider.pth")
    torch.save(pretraining_checkpoint(), pretraining)
    torch.save(segmentation_checkpoint(width=8), wider)
    output = tmp_path / "out.pth"
    assert main(["adapt-checkpoint", pretraining, "-o", str(output)]) == 1
    assert "--input-channels N and/or --encoder-from" in capsys.readouterr().err
    assert main(["adapt-checkpoint", pretraining, "--encoder-from", wider, "-o", str(output)]) == 1
    assert "error: the source's encoder does not fit" in capsys.readouterr().err
    assert not output.exists()


def test_adapt_checkpoint_killed_while_writing_leaves_no_file_under_the_output_name(tmp_path, monkeypatch):
    from nnunet_mim.cli import main
    pretraining, source = str(tmp_path / "pretraining.pth"), str(tmp_path / "segmentation.pth")
    torch.save(pretraining_checkpoint(), pretraining)
    torch.save(segmentation_checkpoint(), source)
    real_save = torch.save

    def save_half_then_die(obj, path):
        real_save(obj, path)
        with open(path, "r+b") as f:
            f.truncate(10)
        raise KeyboardInterrupt  # as a kill between the first and the last byte

    monkeypatch.setattr(torch, "save", save_half_then_die)
    output = tmp_path / "out.pth"
    with pytest.raises(KeyboardInterrupt):
        main(["adapt-checkpoint", pretraining, "--encoder-from", source, "-o", str(output)])
    assert not output.exists()
    monkeypatch.setattr(torch, "save", real_save)
    assert main(["adapt-checkpoint", pretraining, "--encoder-from", source, "-o", str(output)]) == 0
    assert torch.load(output, weights_only=False)["nnunet_mim"]["method"] == "supervised"


class WritesAMarker:
    """Unpickled without weights_only, it calls open(marker, "w"): the stand-in for any code a crafted
    checkpoint runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def crafted_checkpoint(tmp_path):
    checkpoint = pretraining_checkpoint()
    checkpoint["nnunet_mim"]["payload"] = WritesAMarker(tmp_path / "marker")
    path = tmp_path / "crafted.pth"
    torch.save(checkpoint, path)
    return str(path), tmp_path / "marker"


def test_a_crafted_checkpoint_runs_nothing_and_the_message_names_the_call_and_the_opt_in(tmp_path, monkeypatch):
    from nnunet_mim.checkpointing import TRUST_CHECKPOINTS_VARIABLE, UntrustedCheckpointError
    from nnunet_mim.finetuning.checkpoint import load_checkpoint
    monkeypatch.delenv(TRUST_CHECKPOINTS_VARIABLE, raising=False)
    path, marker = crafted_checkpoint(tmp_path)
    with pytest.raises(UntrustedCheckpointError) as refused:
        load_checkpoint(path)
    assert not marker.exists()
    assert "io.open" in str(refused.value) and f"{TRUST_CHECKPOINTS_VARIABLE}=1" in str(refused.value)
    # the opt-in loads it as nnU-Net would, and then the file does run its code: the test above could fail
    monkeypatch.setenv(TRUST_CHECKPOINTS_VARIABLE, "1")
    assert load_checkpoint(path)["network_weights"]
    assert marker.exists()


def test_adapt_checkpoint_and_the_benchmark_refuse_a_crafted_checkpoint(tmp_path, monkeypatch, capsys):
    from nnunet_mim.benchmark import BUDGETS, BenchmarkError, given_pretrained_weights
    from nnunet_mim.checkpointing import TRUST_CHECKPOINTS_VARIABLE
    from nnunet_mim.cli import main
    monkeypatch.delenv(TRUST_CHECKPOINTS_VARIABLE, raising=False)
    path, marker = crafted_checkpoint(tmp_path)
    assert main(["adapt-checkpoint", path, "--input-channels", "2", "-o", str(tmp_path / "out.pth")]) == 1
    assert TRUST_CHECKPOINTS_VARIABLE in capsys.readouterr().err
    with pytest.raises(BenchmarkError, match=TRUST_CHECKPOINTS_VARIABLE):
        given_pretrained_weights("MAE", path, ["scratch", "MAE"], BUDGETS["smoke"])
    assert not marker.exists() and not (tmp_path / "out.pth").exists()


def test_adapt_checkpoint_refuses_what_it_cannot_adapt_before_printing_success(tmp_path, capsys):
    """A checkpoint of a segmentation run (stock nnU-Net's or ours), a channel count below 1, an output folder that
    does not exist: one line saying what to do, no traceback, no file."""
    from nnunet_mim.cli import main
    pretraining, stock = str(tmp_path / "pretraining.pth"), str(tmp_path / "stock.pth")
    torch.save(pretraining_checkpoint(), pretraining)
    torch.save({"network_weights": {"encoder.stages.0.0.convs.0.conv.weight": torch.zeros(4, 1, 3, 3, 3)},
                "trainer_name": "nnUNetTrainer", "init_args": {}, "current_epoch": 1000}, stock)
    output = tmp_path / "out.pth"
    assert main(["adapt-checkpoint", stock, "--input-channels", "2", "-o", str(output)]) == 1
    assert "is not an nnunet-mim pre-training checkpoint" in capsys.readouterr().err
    for channels in ("0", "-1", "two"):
        with pytest.raises(SystemExit) as stop:
            main(["adapt-checkpoint", pretraining, "--input-channels", channels, "-o", str(output)])
        assert stop.value.code == 2 and "--input-channels" in capsys.readouterr().err
    missing = tmp_path / "no_such_folder" / "out.pth"
    assert main(["adapt-checkpoint", pretraining, "--input-channels", "2", "-o", str(missing)]) == 1
    out = capsys.readouterr()
    assert "does not exist; create it first" in out.err and out.out == ""
    assert not output.exists() and not missing.parent.exists()


def test_a_full_disk_says_so_keeps_the_previous_file_and_leaves_no_partial(tmp_path, monkeypatch):
    import errno
    import shutil

    from nnunet_mim.checkpointing import write_atomically
    path = tmp_path / "checkpoint_latest.pth"
    path.write_bytes(b"the previous checkpoint")

    def write_until_full(partial):
        with open(partial, "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")
    with pytest.raises(OSError, match="disk full while writing .*checkpoint_latest.pth: the previous file"):
        write_atomically(str(path), write_until_full)
    assert path.read_bytes() == b"the previous checkpoint" and sorted(p.name for p in tmp_path.iterdir()) == [path.name]

    def blosc2_style(partial):  # a library's own error, the errno lost on the way
        with open(partial, "wb") as f:
            f.write(b"half")
        raise RuntimeError("Could not write the chunk")
    with monkeypatch.context() as patched:
        patched.setattr("shutil.disk_usage", lambda folder: shutil._ntuple_diskusage(100, 100, 0))
        with pytest.raises(OSError, match="disk full while writing"):
            write_atomically(str(path), blosc2_style)
    with pytest.raises(RuntimeError, match="Could not write the chunk"):  # with room left: the error as it came
        write_atomically(str(path), blosc2_style)
    assert path.read_bytes() == b"the previous checkpoint" and sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_a_dataset_given_by_its_folder_reports_the_channels_of_another_modality(tmp_path):
    import json

    from nnunet_mim.data.sources import find_images
    folder = tmp_path / "Dataset777_PetCt"
    (folder / "imagesTr").mkdir(parents=True)
    for channel in ("0000", "0001"):
        (folder / "imagesTr" / f"case_a_{channel}.nii.gz").write_bytes(b"")
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT", "1": "PET"}, "file_ending": ".nii.gz",
                                                     "labels": {"background": 0}, "numTraining": 1}))
    found = list(find_images([str(folder)], "ct"))
    assert [(os.path.basename(i.files[0]), i.skip_reason) for i in found] == [
        ("case_a_0000.nii.gz", ""), ("case_a_0001.nii.gz", "channel 1 (PET) is not CT, the collection's modality")]


def test_a_zip_bomb_and_a_stride_0_tensor_are_refused_before_they_take_memory(tmp_path, monkeypatch):
    """The probe's memory bombs through allowed globals: a compressed archive that inflates to gigabytes, and a
    tensor that views a few bytes as billions of elements (any copy of it takes the gigabytes)."""
    import zipfile

    from nnunet_mim.checkpointing import TRUST_CHECKPOINTS_VARIABLE, UntrustedCheckpointError, read_checkpoint
    monkeypatch.delenv(TRUST_CHECKPOINTS_VARIABLE, raising=False)
    plain = tmp_path / "plain.pth"
    torch.save({"network_weights": {"w": torch.zeros(1000, 1000)}}, plain)  # 4 MB of zeros, stored
    bomb = tmp_path / "bomb.pth"
    with zipfile.ZipFile(plain) as source, zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as target:
        for member in source.infolist():
            target.writestr(member.filename, source.read(member))  # the same members, deflated: 4 MB -> 4 KB
    assert bomb.stat().st_size < 100_000
    with pytest.raises(UntrustedCheckpointError, match="torch.save never compresses"):
        read_checkpoint(str(bomb))
    viewed = tmp_path / "viewed.pth"
    torch.save({"network_weights": {"w": torch.zeros(1).expand(10 ** 8)}}, viewed)
    with pytest.raises(UntrustedCheckpointError, match="stride-0 view"):
        read_checkpoint(str(viewed))
    assert read_checkpoint(str(plain))["network_weights"]["w"].shape == (1000, 1000)


def test_a_checkpoint_of_shared_references_is_read_in_one_pass(tmp_path):
    """Lists nested 64 deep, each holding the one below twice: 65 objects in a file of 2 KB, 2^64 paths to walk for a
    check that follows every reference (the stride-0 check once did, and never finished)."""
    nested = [torch.zeros(2)]
    for _ in range(64):
        nested = [nested, nested]
    torch.save({"network_weights": {}, "logging": nested}, tmp_path / "shared.pth")
    assert os.path.getsize(tmp_path / "shared.pth") < 4096

    def hung(*_):
        raise TimeoutError("the read did not end in 30 s")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(30)
    try:
        checkpoint = read_checkpoint(str(tmp_path / "shared.pth"))
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert len(checkpoint["logging"]) == 2


def test_a_crafted_case_properties_file_is_refused_by_the_pretraining_loader(tmp_path):
    """A preprocessed folder someone gave you: each case's .pkl is unpickled when pre-training reads the case."""
    import numpy as np
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    from nnunet_mim.checkpointing import UntrustedCheckpointError
    from nnunet_mim.pretraining.data import ImagesOnlyDataset
    image = np.zeros((1, 8, 8, 8), dtype=np.float32)
    properties = {"spacing": [1.0, 1.0, 1.0], "class_locations": {1: np.zeros((0, 4), dtype=np.int64)}}
    nnUNetDatasetBlosc2.save_case(image, np.zeros((1, 8, 8, 8), dtype=np.int8), properties, str(tmp_path / "good"))
    nnUNetDatasetBlosc2.save_case(image, np.zeros((1, 8, 8, 8), dtype=np.int8),
                                  {**properties, "payload": WritesAMarker(tmp_path / "marker")}, str(tmp_path / "bad"))
    dataset = ImagesOnlyDataset(str(tmp_path))
    assert dataset.load_case("good")[3]["spacing"] == [1.0, 1.0, 1.0]
    with pytest.raises(UntrustedCheckpointError, match=r"bad.pkl was not read: unpickling it would call .*open"):
        dataset.load_case("bad")
    assert not (tmp_path / "marker").exists()
