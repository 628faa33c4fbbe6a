"""Bad input, one row each: what a user might give the plugin, and what must come of it. A refusal is one
clear message that says what to do (exit status 1, or 2 for what argparse refuses), never a traceback;
after every row, nothing the user had was changed and nothing half-written was left.

Small synthetic files, no training: the whole table runs in seconds. The rows that need a planned
dataset or a training run live beside their feature (tests/test_end_to_end.py: fine-tuning from a
segmentation run's, a crafted, an nnssl or a corrupt checkpoint, a dataset without preprocessed images,
a killed run; tests/test_collection.py: truncated, NaN, header-less and corrupt DICOM images, one stem twice;
tests/test_run_lock.py: two runs on one folder).
"""
import hashlib
import os
import signal
from dataclasses import dataclass
from typing import Callable, Dict, List

import numpy as np
import pytest
import torch

from nnunet_mim.checkpointing import TRUST_CHECKPOINTS_VARIABLE
from nnunet_mim.pretraining_record import PretrainingRecord
from test_checkpoint import WritesAMarker, pretraining_checkpoint, segmentation_checkpoint


def write_inputs(folder) -> Dict[str, str]:
    """Every file a row may name, by its role."""
    files = {}

    def save(name, obj):
        files[name] = str(folder / f"{name}.pth")
        torch.save(obj, files[name])

    save("pretraining", pretraining_checkpoint())
    save("segmentation_from_scratch", segmentation_checkpoint())
    save("segmentation_wider", segmentation_checkpoint(width=8))
    finetuned = segmentation_checkpoint()
    finetuned["network_weights"]["pretraining_record"] = PretrainingRecord(
        "MAE", "T", False, 1, (32, 32, 32), (1.0, 1.0, 1.0), 100).to_tensor()
    save("segmentation_finetuned", finetuned)
    save("stock_nnunet", {"network_weights": {"encoder.stages.0.0.convs.0.conv.weight": torch.zeros(4, 1, 3, 3, 3)},
                          "trainer_name": "nnUNetTrainer", "init_args": {}})
    save("nnssl", {"network_weights": {"encoder.stem.convs.0.conv.weight": torch.zeros(4, 1, 3, 3, 3)},
                   "nnssl_adaptation_plan": {"architecture_plans": {"arch_class_name": "PrimusM"}}})
    save("weights_not_a_dict", {"network_weights": [torch.zeros(3)]})
    poisoned = pretraining_checkpoint()
    poisoned["network_weights"]["encoder.stages.0.w"][1] = float("nan")
    save("nan_weights", poisoned)
    integers = pretraining_checkpoint()
    integers["network_weights"]["encoder.stages.0.w"] = torch.zeros(4, dtype=torch.int64)
    save("integer_weights", integers)
    object_array = pretraining_checkpoint()
    object_array["nnunet_mim"]["rng"] = np.array([1, "a", None], dtype=object)
    save("object_array", object_array)
    newer = pretraining_checkpoint()
    newer["network_weights"]["pretraining_record"][0] = 2.0
    save("newer_record", newer)
    faked = segmentation_checkpoint()
    faked["trainer_name"] = "X\x1b[2K\rwrote out.pth; all weights loaded"  # erases its line, prints a fake one
    save("escape_sequences", faked)
    crafted = pretraining_checkpoint()
    crafted["nnunet_mim"]["payload"] = WritesAMarker(folder / "marker")
    save("crafted", crafted)
    files["truncated"] = str(folder / "truncated.pth")
    with open(files["pretraining"], "rb") as f:
        whole = f.read()
    with open(files["truncated"], "wb") as f:
        f.write(whole[:len(whole) // 2])
    files["not_a_checkpoint"] = str(folder / "notes.pth")
    with open(files["not_a_checkpoint"], "w") as f:
        f.write("not a checkpoint")
    files["missing"] = str(folder / "missing.pth")
    files["existing_output"] = str(folder / "existing_output.pth")
    with open(files["existing_output"], "w") as f:
        f.write("a file of the user's")
    return files


@dataclass(frozen=True)
class Row:
    name: str
    argv: Callable[[Dict[str, str], str], List[str]]  # (input files, output path) -> nnunet-mim arguments
    status: int
    message: str  # in what the command prints to stderr


ADAPT = ["adapt-checkpoint"]
ROWS = [
    Row("a crafted checkpoint (runs code when unpickled)",
        lambda f, out: ADAPT + [f["crafted"], "--input-channels", "2", "-o", out], 1,
        f"set {TRUST_CHECKPOINTS_VARIABLE}=1"),
    Row("a truncated checkpoint", lambda f, out: ADAPT + [f["truncated"], "--input-channels", "2", "-o", out], 1,
        "cannot read the pre-trained checkpoint"),
    Row("a file that is no checkpoint", lambda f, out: ADAPT + [f["not_a_checkpoint"], "--input-channels", "2", "-o",
                                                                out], 1,
        "cannot read the pre-trained checkpoint"),
    Row("a text file as a checkpoint: one reason, not torch's advice to load it unsafely",
        lambda f, out: ADAPT + [f["not_a_checkpoint"], "--input-channels", "2", "-o", out], 1,
        "not a checkpoint this can read (Unsupported operand"),
    Row("a numpy object array (the route of a 2 KB file to gigabytes)",
        lambda f, out: ADAPT + [f["object_array"], "--input-channels", "2", "-o", out], 1,
        "not a checkpoint this can read (Can only build Tensor"),
    Row("a pretraining record of a newer format",
        lambda f, out: ADAPT + [f["newer_record"], "--input-channels", "2", "-o", out], 1,
        "was written by a newer nnunet-mim than this one (format 1, method codes up to 3): upgrade"),
    Row("a trainer name of terminal escape sequences, printed escaped",
        lambda f, out: ADAPT + [f["escape_sequences"], "--input-channels", "2", "-o", out], 1,
        r"segmentation run (X\x1b[2K\rwrote out.pth; all weights loaded, trained with labels"),
    Row("a folder as a checkpoint", lambda f, out: ADAPT + [os.path.dirname(f["missing"]), "--input-channels", "2",
                                                            "-o", out], 1, "is a folder, not a file"),
    Row("a checkpoint that does not exist", lambda f, out: ADAPT + [f["missing"], "--input-channels", "2", "-o", out],
        1, "no such file (give the path of a checkpoint_final.pth)"),
    Row("stock nnU-Net's checkpoint", lambda f, out: ADAPT + [f["stock_nnunet"], "--input-channels", "2", "-o", out],
        1, "is not an nnunet-mim pre-training checkpoint"),
    Row("an nnssl checkpoint whose plan names no input projection",
        lambda f, out: ADAPT + [f["nnssl"], "--input-channels", "2", "-o", out], 1,
        "its nnssl plan names no input projection (keys_to_in_proj)"),
    Row("a segmentation run trained from scratch",
        lambda f, out: ADAPT + [f["segmentation_from_scratch"], "--input-channels", "2", "-o", out], 1,
        "segmentation run (nnUNetTrainerMiMScratch_T_CPUxlong, trained with labels from random weights)"),
    Row("a segmentation run fine-tuned from MAE",
        lambda f, out: ADAPT + [f["segmentation_finetuned"], "--input-channels", "2", "-o", out], 1,
        "trained with labels from MAE pre-training), not of pre-training"),
    Row("network_weights that are not a dict",
        lambda f, out: ADAPT + [f["weights_not_a_dict"], "--input-channels", "2", "-o", out], 1,
        "holds no dict of 'network_weights'"),
    Row("weights holding NaN", lambda f, out: ADAPT + [f["nan_weights"], "--input-channels", "2", "-o", out], 1,
        "holds weights no training can start from: encoder.stages.0.w holds 1 NaN or infinite values"),
    Row("weights stored as integers", lambda f, out: ADAPT + [f["integer_weights"], "--input-channels", "2", "-o",
                                                                out], 1, "encoder.stages.0.w is stored as int64"),
    Row("--input-channels 0", lambda f, out: ADAPT + [f["pretraining"], "--input-channels", "0", "-o", out], 2,
        "argument --input-channels: 0 is not a number of channels (give 1 or more)"),
    Row("--input-channels -3", lambda f, out: ADAPT + [f["pretraining"], "--input-channels", "-3", "-o", out], 2,
        "argument --input-channels"),
    Row("nothing to adapt", lambda f, out: ADAPT + [f["pretraining"], "-o", out], 1,
        "give --input-channels N and/or --encoder-from"),
    Row("an output that exists", lambda f, out: ADAPT + [f["pretraining"], "--input-channels", "2", "-o",
                                                          f["existing_output"]], 1,
        "exists; choose another --output (nothing is overwritten)"),
    Row("an output folder that does not exist",
        lambda f, out: ADAPT + [f["pretraining"], "--input-channels", "2", "-o",
                                os.path.join(os.path.dirname(out), "no_such_folder", "out.pth")], 1,
        "does not exist; create it first"),
    Row("--encoder-from a pre-training checkpoint",
        lambda f, out: ADAPT + [f["pretraining"], "--encoder-from", f["pretraining"], "-o", out], 1,
        "the encoder's source is not the checkpoint of an nnU-Net segmentation run"),
    Row("--encoder-from an encoder of another width",
        lambda f, out: ADAPT + [f["pretraining"], "--encoder-from", f["segmentation_wider"], "-o", out], 1,
        "the source's encoder does not fit the pre-training checkpoint's (another preset?)"),
    Row("export: a checkpoint without the plan its run saved",
        lambda f, out: ["export", f["pretraining"], "--format", "nnssl", "-o", out], 1,
        "was not exported: it holds no plan (init_args)"),
    Row("export: an nnssl checkpoint", lambda f, out: ["export", f["nnssl"], "--format", "nnssl", "-o", out], 1,
        "is an nnssl checkpoint (PrimusM)"),
    Row("a benchmark fold given twice", lambda f, out: ["benchmark", "999", "--folds", "0", "0"], 2,
        "argument --folds: 0 given more than once"),
    Row("a benchmark arm given twice", lambda f, out: ["benchmark", "999", "--arms", "MiM", "MiM"], 2,
        "argument --arms: MiM given more than once"),
    Row("--pretrained-weights naming an arm twice",
        lambda f, out: ["benchmark", "999", "--pretrained-weights", f"MAE={f['pretraining']}",
                        f"MAE={f['pretraining']}"], 2, "--pretrained-weights names an arm twice"),
    Row("compare on a folder that holds no benchmark", lambda f, out: ["compare", f"a={os.path.dirname(out)}",
                                                                        "-o", out], 1, "no downstream_runs.csv in"),
    Row("a collection's batch size of 0", lambda f, out: ["pretrain-dataset", "create", "-d", "995", "-n", "X", "-i",
                                                          out, "--batch-size", "0"], 2,
        "argument --batch-size: 0 is not a batch size (give 1 or more)"),
    Row("a negative source weight", lambda f, out: ["pretrain-dataset", "create", "-d", "995", "-n", "X", "-i", out,
                                                     "--source-weight", "a=-1"], 2, "a's weight -1 is not a share"),
    Row("a collection's spacing of 0", lambda f, out: ["pretrain-dataset", "create", "-d", "995", "-n", "X", "-i", out,
                                                        "--spacing", "0", "0", "0"], 2,
        "argument --spacing: 0 mm is not a spacing"),
    Row("an example dataset's spacing of 0", lambda f, out: ["example-dataset", "995", "--spacing", "0"], 2,
        "argument --spacing: 0 mm is not a spacing"),
    Row("a demo --work-folder that is a file", lambda f, out: ["demo", "--work-folder", f["existing_output"]], 1,
        "is a file, not a folder; choose another --work-folder"),
    Row("an unknown example template", lambda f, out: ["example-dataset", "995", "--template", "brain"], 2,
        "argument --template: invalid choice: 'brain'"),
]


HANG_SECONDS = 60  # a row that has not answered by then hangs (each answers in well under a second)


def digest(folder) -> Dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in sorted(os.listdir(folder))}


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_bad_input_ends_in_one_clear_message_and_changes_nothing(row, tmp_path, capsys, monkeypatch):
    from nnunet_mim.cli import main
    monkeypatch.delenv(TRUST_CHECKPOINTS_VARIABLE, raising=False)
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    files = write_inputs(inputs)
    before = digest(inputs)
    out = str(tmp_path / "out")
    def hung(*_):
        raise TimeoutError(f"{row.name}: no answer in {HANG_SECONDS} s")
    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(HANG_SECONDS)
    try:
        status = main(row.argv(files, out))
    except SystemExit as stop:  # argparse
        status = stop.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    printed = capsys.readouterr()
    assert status == row.status, printed.err
    assert row.message in printed.err, printed.err
    assert "Traceback" not in printed.err + printed.out
    assert "weights_only` set to `False`" not in printed.err  # never torch's advice to load the file unsafely
    assert "\x1b" not in printed.err + printed.out  # nothing read from a file reaches the terminal raw
    assert not (inputs / "marker").exists()  # no code ran from a checkpoint
    assert digest(inputs) == before  # every input byte-identical, the user's existing output included
    assert sorted(os.listdir(tmp_path)) == ["inputs"]  # nothing written beside them, not even a partial file


def test_the_table_covers_every_outcome_it_promises():
    """Read by the note of issue 55: how many rows, how many end in a clear message."""
    assert len(ROWS) >= 20 and len({row.name for row in ROWS}) == len(ROWS)
    assert {row.status for row in ROWS} == {1, 2}
