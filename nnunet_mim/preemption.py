"""Stop a training run cleanly when the cluster asks: SIGUSR1 (SLURM's ``--signal=USR1@120``) or SIGTERM.

The signal only sets a flag. After the training step that is running, every rank agrees to stop (one
all-reduce of that flag, so a signal that reached one rank stops all of them at the same step), global
rank 0 writes ``checkpoint_latest.pth`` atomically and ``preempted.json`` beside it, and the run exits
with ``PREEMPTED_EXIT_CODE``. ``--c`` continues it on any number of nodes.

The checkpoint is nnU-Net's own, taken as if the interrupted epoch had not begun: its epoch counter and
logged curves stop at the last whole epoch, its weights and optimizer are those reached. ``--c`` runs
that epoch again in full, so a preempted run trains at most one epoch's steps more than an uninterrupted
one (250 of 250,000 in nnU-Net's 1000 epochs). Works with every nnU-Net trainer: it wraps the trainer's
``train_step`` and calls its ``save_checkpoint``.

The handlers are installed before the trainer is built: a signal during start-up (reading the dataset,
building the network, loading a checkpoint) ends the run once start-up is over, with the marker and no
checkpoint. The marker says the exact command that continues the run (``continue_args``): with ``--c``
and without ``-pretrained_weights`` (which nnU-Net refuses beside ``--c``) where a checkpoint exists, the
original command where none does. Data-loading workers forked from the process inherit the handlers; in
them a signal does what it would have done without (SIGTERM ends the worker), decided by process id.
"""
import json
import os
import signal
import time
from typing import List, Optional

import torch
import torch.distributed as dist
from batchgenerators.utilities.file_and_folder_operations import join

from nnunet_mim.checkpointing import write_atomically

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, to be retried
STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
MARKER = "preempted.json"


class Preempted(Exception):
    """Raised out of the training loop once the checkpoint is on disk."""


def continue_args(argv: List[str], output_folder: str) -> List[str]:
    """nnunet-mim train's arguments that continue the run ``argv`` started: ``--c``, without -pretrained_weights,
    once a checkpoint exists; ``argv`` itself before (nothing was trained: start again)."""
    from nnunet_mim.checkpointing import CHECKPOINTS
    if not any(os.path.isfile(join(output_folder, name)) for name in CHECKPOINTS):
        return list(argv)
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "-pretrained_weights":
            skip = True
        elif not arg.startswith("-pretrained_weights="):
            args.append(arg)
    return args if "--c" in args else [*args, "--c"]


class PreemptibleTraining:
    """Catches the stop signals from its creation; a context manager around ``trainer.run_training()``
    (module docstring). ``argv``: the command's arguments, for the marker's ``continue_args``."""

    def __init__(self, argv: List[str]):
        self.argv = list(argv)
        self.trainer = None
        self.received: Optional[int] = None
        self.steps_in_epoch = 0
        self._epoch = None
        self._pid = os.getpid()
        self._previous_handlers = {sig: signal.signal(sig, self._receive) for sig in STOP_SIGNALS}

    def restore_handlers(self) -> None:
        for sig, handler in self._previous_handlers.items():
            signal.signal(sig, handler)

    def stop_if_received_during_startup(self) -> None:
        """After the trainer is built and its checkpoint loaded: a signal that came in the meantime ends the run
        here, with the marker (nothing was trained, so no checkpoint is written)."""
        if self._all_ranks_stop():
            if self.trainer.local_rank == 0:
                os.makedirs(self.trainer.output_folder, exist_ok=True)
                self._write_marker("during start-up, before the first training step")
            raise Preempted(f"stopped by {signal.Signals(self.received).name} during start-up")

    def __enter__(self):
        train_step = self.trainer.train_step

        def train_step_then_maybe_stop(batch):
            if self.trainer.current_epoch != self._epoch:
                self._epoch, self.steps_in_epoch = self.trainer.current_epoch, 0
            outputs = train_step(batch)
            self.steps_in_epoch += 1
            if self._all_ranks_stop():
                self._checkpoint_and_stop()
            return outputs

        self.trainer.train_step = train_step_then_maybe_stop  # this instance only
        return self

    def __exit__(self, *exc):
        del self.trainer.train_step
        return False

    def _receive(self, signum, frame) -> None:
        if os.getpid() != self._pid:  # a forked data-loading worker: what the signal would have done
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        # only a flag: printing here could re-enter a print the signal interrupted (a RuntimeError)
        self.received = signum

    def _all_ranks_stop(self) -> bool:
        if not (dist.is_available() and dist.is_initialized()):
            return self.received is not None
        device = self.trainer.device if dist.get_backend() == "nccl" else torch.device("cpu")
        flag = torch.tensor([0 if self.received is None else int(self.received)], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)  # every rank stops at the same step
        agreed = int(flag.item())  # one device sync per step
        if agreed and self.received is None:
            self.received = agreed
        return bool(agreed)

    def stop_if_received_after_training(self) -> None:
        """A signal after the last training step: the training is whole (checkpoint_final.pth), its final
        validation is left to ``--c`` (which finds the finished training and only validates) or ``--val``."""
        if self._all_ranks_stop():
            if self.trainer.local_rank == 0:
                self._write_marker("after the last training step; the final validation was not run")
            raise Preempted(f"stopped by {signal.Signals(self.received).name} after the training finished, before "
                            "its final validation; run it with --c or --val")

    def _write_marker(self, where: str) -> None:
        import shlex
        args = continue_args(self.argv, self.trainer.output_folder)
        with open(join(self.trainer.output_folder, MARKER), "w") as f:
            json.dump({"signal": signal.Signals(self.received).name, "stopped": where,
                       "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                       "continue_with": shlex.join(["nnunet-mim", "train", *args]) + " (under torchrun as before, "
                                        "on any number of nodes)",
                       "continue_args": args}, f, indent=1)

    def _checkpoint_and_stop(self) -> None:
        trainer = self.trainer
        epoch = trainer.current_epoch
        # the interrupted epoch's entries (its start time and lr) go: the curves end at the last whole epoch
        for values in trainer.logger.get_checkpoint().values():
            del values[epoch:]
        latest = join(trainer.output_folder, "checkpoint_latest.pth")
        if trainer.local_rank == 0 and not trainer.disable_checkpointing:
            trainer.current_epoch -= 1  # nnU-Net stores current_epoch + 1: --c starts this epoch again
            try:
                write_atomically(latest, trainer.save_checkpoint)
            finally:
                trainer.current_epoch += 1
            self._write_marker(f"epoch {epoch}, after step {self.steps_in_epoch}; {latest} holds the weights reached")
            trainer.print_to_log_file(f"{signal.Signals(self.received).name}: stopped at step {self.steps_in_epoch} "
                                      f"of epoch {epoch}; {latest} written. Continue with --c (epoch {epoch} "
                                      "runs again from its start with the weights reached).")
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # no rank leaves before the checkpoint is on disk
        raise Preempted(f"stopped by {signal.Signals(self.received).name} in epoch {epoch}"
                        + ("" if trainer.disable_checkpointing else f"; continue with --c from {latest}"))


def clear_marker(output_folder: str) -> None:
    """A continued run is no longer preempted."""
    path = join(output_folder, MARKER)
    if os.path.isfile(path):
        os.remove(path)
