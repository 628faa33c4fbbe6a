"""Checkpoint handling shared by all nnunet-mim trainers: nnU-Net's format, written atomically,
never silently replaced; and the atomic write (a temporary file, then a rename) that checkpoints and
pre-training collections are written with."""
import os

import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")


def write_atomically(path: str, write) -> None:
    """``write`` a temporary file beside ``path``, then rename it over ``path``: a process killed
    while writing leaves the previous file (or none), never a truncated one."""
    partial = path + ".partial"  # never ends in .b2nd or .pth: nnU-Net must not take it for a case
    write(partial)
    os.replace(partial, path)


def save_checkpoint_file(checkpoint: dict, path: str) -> None:
    write_atomically(path, lambda partial: torch.save(checkpoint, partial))


class AtomicCheckpointMixin:
    """Write nnU-Net's checkpoint to a temporary file, then rename it over the target.

    A run killed while saving leaves the previous checkpoint intact instead of a truncated file.
    ``checkpoint_extras`` lets a trainer store more state under the ``"nnunet_mim"`` key.
    A new run (no ``--c``) refuses to start in a folder that holds checkpoints of an earlier run,
    where stock nnU-Net would overwrite them.
    """

    def on_train_start(self):
        existing = [f for f in CHECKPOINTS if isfile(join(self.output_folder, f))]
        if self.current_epoch == 0 and existing:
            raise RuntimeError(f"{self.output_folder} holds an earlier run ({', '.join(existing)}). Continue it "
                               "with --c, or move the folder away to start over; nothing was overwritten.")
        super().on_train_start()

    def checkpoint_extras(self) -> dict:
        return {}

    def save_checkpoint(self, filename: str) -> None:
        temporary = filename + ".partial"
        super().save_checkpoint(temporary)
        if not isfile(temporary):  # not rank 0, or checkpointing disabled
            return
        extras = self.checkpoint_extras()
        if extras:
            checkpoint = torch.load(temporary, map_location="cpu", weights_only=False)
            checkpoint["nnunet_mim"] = extras
            torch.save(checkpoint, temporary)
        os.replace(temporary, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        if isinstance(filename_or_checkpoint, str):
            try:
                checkpoint = torch.load(filename_or_checkpoint, map_location="cpu", weights_only=False)
            except Exception as e:
                raise RuntimeError(f"cannot read checkpoint {filename_or_checkpoint}: {e}. The file is corrupt or "
                                   "truncated; delete it to start over, or restore a copy") from e
            trainer = checkpoint.get("trainer_name")
            if trainer != self.__class__.__name__:
                raise RuntimeError(f"{filename_or_checkpoint} was written by trainer {trainer!r}, not "
                                   f"{self.__class__.__name__!r}: --c only continues a run of the same trainer. "
                                   "Nothing was overwritten.")
            self.restore_checkpoint_extras(checkpoint.get("nnunet_mim", {}))
        # the path, not the dict just read: nnU-Net 2.8's load_checkpoint fails on a dict (it only
        # binds its checkpoint for a path), so the file is read twice on resume
        super().load_checkpoint(filename_or_checkpoint)

    def restore_checkpoint_extras(self, extras: dict) -> None:
        pass
