"""Checkpoint handling shared by all nnunet-mim trainers: nnU-Net's format, written atomically,
never silently replaced; the atomic write (a temporary file, then a rename) that checkpoints and
pre-training collections are written with; and the safe reading of checkpoints users give.

A ``.pth`` file is a pickle: read with ``weights_only=False`` (as nnU-Net reads its own), a crafted one
runs any code it names. ``read_checkpoint`` reads a file the user gives (``-pretrained_weights``,
``adapt-checkpoint``, the benchmark's ``--pretrained-weights``, finished runs' learning curves) with
``weights_only=True`` and only the globals an nnU-Net 2.8 checkpoint holds allowed: numpy arrays (the
random states our trainers keep), numpy scalars and their dtypes (nnU-Net's logged metrics). A file
that needs any other is refused with the names, unless the user sets TRUST_CHECKPOINTS_VARIABLE=1.
``read_properties`` unpickles a case's ``.pkl`` properties (read by pre-training) under the same allow-list.
"""
import errno
import importlib
import json
import os
import pickle
import shutil
import stat

import numpy as np
import torch
from batchgenerators.utilities.file_and_folder_operations import isfile, join

CHECKPOINTS = ("checkpoint_final.pth", "checkpoint_latest.pth", "checkpoint_best.pth")
TRUST_CHECKPOINTS_VARIABLE = "NNUNET_MIM_TRUST_CHECKPOINTS"
# numpy 1.26 has a numpy._core too, but only as a shim for reading numpy 2's pickles
_multiarray = importlib.import_module("numpy._core.multiarray" if np.lib.NumpyVersion(np.__version__) >= "2.0.0"
                                      else "numpy.core.multiarray")
# each under the name numpy 2 pickles it by and the one numpy 1 did: files of either read under either
CHECKPOINT_GLOBALS = [
    *[(getattr(_multiarray, name), f"{package}.multiarray.{name}") for name in ("_reconstruct", "scalar")
      for package in ("numpy._core", "numpy.core")], np.ndarray, np.dtype,
    *[type(np.dtype(t)) for t in (np.float64, np.float32, np.float16, np.int64, np.int32, np.uint32, np.uint8,
                                  np.bool_)],
]

ALLOWED_GLOBAL_NAMES = {g[1] if isinstance(g, tuple) else f"{g.__module__}.{g.__name__}" for g in CHECKPOINT_GLOBALS}


class UntrustedCheckpointError(RuntimeError):
    """A checkpoint that would run code, or build objects, beyond what nnU-Net checkpoints hold."""


def archive_problem(path: str) -> str:
    """Why a checkpoint's zip archive must not be unpacked, or "": torch.save stores its members uncompressed,
    so members that inflate (a zip bomb: a few MB of file, gigabytes of output) are not a checkpoint of torch's."""
    import zipfile
    if not zipfile.is_zipfile(path):
        return ""  # torch's legacy format, or not a checkpoint: the load says which
    with zipfile.ZipFile(path) as archive:
        claimed = sum(member.file_size for member in archive.infolist())
        compressed = [m.filename for m in archive.infolist() if m.compress_type != zipfile.ZIP_STORED]
    size = os.path.getsize(path)
    if compressed and claimed > 4 * size + 2 ** 20:
        return (f"its archive inflates {size / 2 ** 20:.1f} MB to {claimed / 2 ** 20:.0f} MB ({compressed[0]}, ...): "
                "torch.save never compresses, so this is not a checkpoint torch wrote")
    return ""


def view_problem(checkpoint) -> str:
    """Why a loaded checkpoint's tensors must not be used, or "": a tensor that claims more elements than its
    storage holds (a stride-0 view of a few bytes that any copy turns into gigabytes). Each object is visited
    once: a pickle's references let a 2 KB file hold lists nested 2^30 paths deep."""
    stack, seen = [checkpoint], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif isinstance(item, torch.Tensor) and item.numel() > 1 and 0 in item.stride():
            return (f"a tensor of shape {list(item.shape)} is a stride-0 view of {item.untyped_storage().nbytes()} "
                    "bytes: no nnU-Net checkpoint holds one")
    return ""


def read_checkpoint(path: str, mmap: bool = False):
    """``torch.load`` of a file the user gives, without running code from it (module docstring)."""
    if os.environ.get(TRUST_CHECKPOINTS_VARIABLE) == "1":
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    problem = archive_problem(path)
    if problem:
        raise UntrustedCheckpointError(f"{path} was not loaded: {problem}")
    try:
        with torch.serialization.safe_globals(CHECKPOINT_GLOBALS):
            checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        problem = view_problem(checkpoint)
        if problem:
            raise UntrustedCheckpointError(f"{path} was not used: {problem}")
        return checkpoint
    except pickle.UnpicklingError as error:
        try:
            named = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        except Exception:  # not a checkpoint at all (corrupt, truncated): the caller says it cannot be read
            raise pickle.UnpicklingError(f"not a checkpoint this can read ({unpickler_reason(error)})") from None
        offending = [g for g in named if g not in ALLOWED_GLOBAL_NAMES]
        if not offending:  # an allowed global asked to build what it may not (a numpy object array, say)
            raise pickle.UnpicklingError(f"not a checkpoint this can read ({unpickler_reason(error)})") from None
        raise UntrustedCheckpointError(
            f"{path} was not loaded: unpickling it would call {', '.join(offending)}, which no nnU-Net checkpoint "
            f"holds, and a checkpoint can run code that way. If you trust the file (you wrote it), set "
            f"{TRUST_CHECKPOINTS_VARIABLE}=1 to load it as nnU-Net does.") from error


class _AllowListUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if f"{module}.{name}" not in ALLOWED_GLOBAL_NAMES:
            raise UntrustedCheckpointError(f"{self.path} was not read: unpickling it would call {module}.{name}, which "
                                           "no nnU-Net case properties hold, and a pickle can run code that way. "
                                           "Preprocess the images again (nnUNetv2_plan_and_preprocess, or nnunet-mim "
                                           "pretrain-dataset create) instead of using a folder someone gave you")
        return super().find_class(module, name)


def read_properties(path: str):
    """A case's ``.pkl`` properties, as nnU-Net's preprocessing writes them (Python values, numpy arrays and
    scalars), unpickled with the checkpoints' allow-list: a crafted file cannot run code."""
    with open(path, "rb") as f:
        unpickler = _AllowListUnpickler(f)
        unpickler.path = path
        return unpickler.load()


def unpickler_reason(error: Exception) -> str:
    """The reason in torch's weights-only error, without its advice to load the file unsafely."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if line.endswith("WeightsUnpickler error:") and i + 1 < len(lines):
            return lines[i + 1]
    return lines[0] if lines else type(error).__name__


def unreadable(path: str) -> str:
    """Why the file ``path`` cannot be read, or "": missing, a folder, a FIFO, socket or device (reading one could
    wait forever), or not permitted, each told apart ("does not exist" would send the user looking for a file that
    is there)."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as error:
        return f"cannot be reached: {error.strerror}"
    if stat.S_ISDIR(mode):
        return "is a folder, not a file"
    if not stat.S_ISREG(mode):
        return "not a regular file (a FIFO, socket or device: reading it could wait forever)"
    if not os.access(path, os.R_OK):
        return "no permission to read it"
    return ""


def shown(value, limit: int = 120) -> str:
    """A value read from a file, as it may be printed: control characters escaped (a crafted name cannot move
    the cursor or fake a line of output), and cut at ``limit`` characters."""
    text = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in str(value))
    return text if len(text) <= limit else text[:limit] + "..."


def write_atomically(path: str, write) -> None:
    """``write`` a temporary file beside ``path``, then rename it over ``path``: a process killed
    while writing leaves the previous file (or none), never a truncated one."""
    partial = path + ".partial"  # never ends in .b2nd or .pth: nnU-Net must not take it for a case
    try:
        write(partial)
    except BaseException as error:
        if os.path.exists(partial):
            os.remove(partial)
        # torch and blosc2 do not always pass the OSError on: a failed write with the disk full is taken as one
        if getattr(error, "errno", None) == errno.ENOSPC or shutil.disk_usage(os.path.dirname(partial) or ".").free \
                < 2 ** 20:
            raise OSError(errno.ENOSPC, f"disk full while writing {path}: the previous file (if any) is kept and the "
                                        "partial one removed; free space and run again") from None
        raise
    os.replace(partial, path)


def save_json(obj, path: str) -> None:
    """``obj`` as JSON at ``path``, written atomically."""
    def write(partial):
        with open(partial, "w") as f:
            json.dump(obj, f, indent=1)
    write_atomically(path, write)


def save_checkpoint_file(checkpoint: dict, path: str) -> None:
    write_atomically(path, lambda partial: torch.save(checkpoint, partial))


class AtomicCheckpointMixin:
    """Write nnU-Net's checkpoint to a temporary file, then rename it over the target.

    A run killed while saving leaves the previous checkpoint intact instead of a truncated file.
    ``checkpoint_extras`` lets a trainer store more state under the ``"nnunet_mim"`` key.
    A new run (no ``--c``) refuses to start in a folder that holds checkpoints of an earlier run,
    where stock nnU-Net would overwrite them.
    """

    continued = False  # True once load_checkpoint ran: --c (which can start at epoch 0) or --val

    def on_train_start(self):
        existing = [f for f in CHECKPOINTS if isfile(join(self.output_folder, f))]
        if not self.continued and existing:
            raise RuntimeError(f"{self.output_folder} holds an earlier run ({', '.join(existing)}). Continue it "
                               "with --c, or move the folder away to start over; nothing was overwritten.")
        super().on_train_start()

    def checkpoint_extras(self) -> dict:
        return {}

    def restore_checkpoint_extras(self, extras: dict) -> None:
        """Restore what ``checkpoint_extras`` stored (a continued run)."""

    def save_checkpoint(self, filename: str) -> None:
        if self.local_rank != 0 or self.disable_checkpointing:
            # nnU-Net writes from global rank 0 only (and says so when disabled). Another rank must not go on
            # to look for the file: in a folder all ranks share it finds rank 0's, half written
            super().save_checkpoint(filename)
            return
        temporary = filename + ".partial"
        super().save_checkpoint(temporary)
        extras = self.checkpoint_extras()
        if extras:
            checkpoint = read_checkpoint(temporary)
            checkpoint["nnunet_mim"] = extras
            torch.save(checkpoint, temporary)
        os.replace(temporary, filename)

    def load_checkpoint(self, filename_or_checkpoint) -> None:
        """nnU-Net's ``load_checkpoint``, from one safe read of the file (read_checkpoint): nnU-Net reads it with
        ``weights_only=False``, and its 2.8 method cannot take the dict read here (it binds the checkpoint
        only for a path), so its restoring steps are ``restore_nnunet_state``'s."""
        if not self.was_initialized:
            self.initialize()
        checkpoint = filename_or_checkpoint
        if isinstance(filename_or_checkpoint, str):
            try:
                checkpoint = read_checkpoint(filename_or_checkpoint)
            except UntrustedCheckpointError:
                raise
            except Exception as e:
                raise RuntimeError(f"cannot read checkpoint {filename_or_checkpoint}: {e}. The file is corrupt or "
                                   "truncated; delete it to start over, or restore a copy") from e
            trainer = checkpoint.get("trainer_name")
            if trainer != self.__class__.__name__:
                raise RuntimeError(f"{filename_or_checkpoint} was written by trainer {shown(trainer)!r}, not "
                                   f"{self.__class__.__name__!r}: --c only continues a run of the same trainer. "
                                   "Nothing was overwritten.")
        self.restore_checkpoint_extras(checkpoint.get("nnunet_mim", {}))
        self.continued = True
        self.restore_nnunet_state(checkpoint)

    def restore_nnunet_state(self, checkpoint: dict) -> None:
        """What nnU-Net 2.8's load_checkpoint restores, in its order: weights (a ``module.`` prefix of a DDP save
        dropped), init arguments, epoch, logs, best EMA, mirroring axes, optimizer, gradient scaler."""
        from nnunet_mim.architecture.network import unwrap_network
        network = unwrap_network(self.network)
        own = network.state_dict()
        network.load_state_dict({k[7:] if k not in own and k.startswith("module.") else k: v
                                 for k, v in checkpoint["network_weights"].items()})
        self.my_init_kwargs = checkpoint["init_args"]
        self.current_epoch = checkpoint["current_epoch"]
        self.logger.load_checkpoint(checkpoint["logging"])
        self._best_ema = checkpoint["_best_ema"]
        self.inference_allowed_mirroring_axes = checkpoint.get("inference_allowed_mirroring_axes",
                                                               self.inference_allowed_mirroring_axes)
        self.optimizer.load_state_dict(checkpoint["optimizer_state"])
        if self.grad_scaler is not None and checkpoint.get("grad_scaler_state") is not None:
            self.grad_scaler.load_state_dict(checkpoint["grad_scaler_state"])
