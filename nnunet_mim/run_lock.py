"""One run per output folder: a second `nnunet-mim pretrain-dataset create` or `nnunet-mim benchmark` on
the folder a first one is writing refuses, naming the first, instead of both writing the same files.

An advisory lock (``fcntl.flock``) on a small file that also says who holds it. The operating system
releases it when the holder ends, however it ends, so a killed run leaves no stale lock behind.
"""
import contextlib
import fcntl
import os
import socket
import sys
import time
from typing import Iterator

RUN_LOCK = ".nnunet_mim_run.lock"  # the lock file's name inside a benchmark's work folder


class FolderInUse(RuntimeError):
    """Another process is writing the folder; the message names it."""


@contextlib.contextmanager
def exclusive_run(lock_file: str, folder: str) -> Iterator[None]:
    """Hold ``lock_file`` for the duration, or raise FolderInUse naming the process that holds it."""
    os.makedirs(os.path.dirname(os.path.abspath(lock_file)), exist_ok=True)
    if os.path.isdir(lock_file):
        raise FolderInUse(f"the lock file {lock_file} of {folder} is a folder: remove it (nothing holds a lock in a "
                          "folder), then run again; nothing was changed")
    with open(lock_file, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise FolderInUse(f"{folder} is being written by {holder}; wait for it to finish (or stop it), then "
                              "run again: nothing was changed") from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"process {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
                     f" ({' '.join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv))})\n")
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
