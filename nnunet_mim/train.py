"""``nnunet-mim train`` (``python -m nnunet_mim.train``): ``nnUNetv2_train``, preemptible, and under
torchrun on any number of nodes.

It takes nnUNetv2_train's arguments and runs nnU-Net's own steps with any nnU-Net trainer, ours or
stock: ``get_trainer_from_args``, ``maybe_load_checkpoint``, ``run_training``,
``perform_actual_validation``. SIGUSR1 or SIGTERM during training ends the run with a checkpoint
(nnunet_mim/preemption.py).

- Without torchrun it is nnUNetv2_train; ``-num_gpus N`` goes to nnU-Net's own one-node launcher.
- Under torchrun (RANK, LOCAL_RANK and WORLD_SIZE in the environment) every process joins the process
  group (NCCL on GPUs, gloo on the CPU) and trains on its LOCAL_RANK device. nnU-Net uses the global rank
  as the CUDA index (its ``local_rank`` is ``dist.get_rank()``), which only exists on one node: here
  only the device follows LOCAL_RANK; the batch split, seeds, logging and the one process that writes
  files (global rank 0) keep the global rank. docs/distributed.md shows the commands, SLURM included.
"""
import argparse
import multiprocessing
import os
import sys
from dataclasses import dataclass
from typing import List, Optional

import torch
import torch.distributed as dist

from nnunet_mim.preemption import PREEMPTED_EXIT_CODE, Preempted, PreemptibleTraining, clear_marker


@dataclass(frozen=True)
class TorchrunProcess:
    """This process's place in a torchrun launch."""
    rank: int
    local_rank: int
    world_size: int

    @classmethod
    def from_environment(cls) -> Optional["TorchrunProcess"]:
        names = ("RANK", "LOCAL_RANK", "WORLD_SIZE")
        if not all(n in os.environ for n in names):
            return None
        return cls(*(int(os.environ[n]) for n in names))


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    """nnUNetv2_train's arguments, with its names and defaults."""
    parser = argparse.ArgumentParser(
        prog="nnunet-mim train", description="nnUNetv2_train, preemptible (SIGUSR1/SIGTERM write a checkpoint and "
        f"exit with code {PREEMPTED_EXIT_CODE}), and under torchrun on several nodes (docs/distributed.md)")
    parser.add_argument("dataset_name_or_id")
    parser.add_argument("configuration")
    parser.add_argument("fold", help="0-4, or all")
    parser.add_argument("-tr", default="nnUNetTrainer", help="trainer class (default: nnUNetTrainer)")
    parser.add_argument("-p", default="nnUNetPlans", help="plans identifier (default: nnUNetPlans)")
    parser.add_argument("-pretrained_weights", default=None, help="checkpoint whose weights start the training")
    parser.add_argument("-num_gpus", type=int, default=1,
                        help="GPUs of this machine, with nnU-Net's own launcher (not under torchrun)")
    parser.add_argument("--npz", action="store_true", help="also save the validation's softmax outputs")
    parser.add_argument("--c", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--val", action="store_true", help="only run the validation of a finished training")
    parser.add_argument("--val_best", action="store_true", help="validate with checkpoint_best.pth")
    parser.add_argument("--disable_checkpointing", action="store_true", help="write no checkpoints")
    parser.add_argument("-device", default="cuda", choices=("cuda", "cpu", "mps"))
    return parser.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    process = TorchrunProcess.from_environment()
    if process is not None and args.num_gpus != 1:
        print(f"error: -num_gpus {args.num_gpus} under torchrun: torchrun starts the processes (--nnodes x "
              "--nproc-per-node); leave -num_gpus out", file=sys.stderr)
        return 2
    if process is not None and args.device == "mps":
        print("error: -device mps under torchrun: several processes need cuda (NCCL) or cpu (gloo)", file=sys.stderr)
        return 2
    if args.c and args.val:
        print("error: --c and --val together: --val only validates a finished training", file=sys.stderr)
        return 2
    if args.val_best and args.disable_checkpointing:
        print("error: --val_best needs checkpoints; leave out --disable_checkpointing", file=sys.stderr)
        return 2
    if args.fold != "all" and not args.fold.isdigit():
        print(f"error: fold {args.fold!r}: a fold number (0-4 for nnU-Net's splits) or all", file=sys.stderr)
        return 2
    if args.num_gpus > 1:  # one machine, nnU-Net's mp.spawn launcher, unchanged
        from nnunetv2.run.run_training import run_training
        run_training(args.dataset_name_or_id, args.configuration, args.fold, args.tr, args.p, args.pretrained_weights,
                     args.num_gpus, args.npz, args.c, args.val, args.disable_checkpointing, args.val_best,
                     device=torch.device(args.device))
        return 0
    if process is not None:
        problem = batch_too_small(args, process.world_size)
        if problem:
            print(f"error: {problem}", file=sys.stderr)
            return 2
    device = process_device(args.device, process)
    if process is not None:
        join_process_group(device)
    try:
        return train(args, device, argv)
    finally:
        if process is not None:
            dist.destroy_process_group()


def batch_too_small(args: argparse.Namespace, world_size: int) -> Optional[str]:
    """nnU-Net splits the plan's batch over the ranks, at least one crop each (else an assertion, mid-way)."""
    from batchgenerators.utilities.file_and_folder_operations import isfile, join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    try:
        plans_file = join(nnUNet_preprocessed, maybe_convert_to_dataset_name(args.dataset_name_or_id), args.p + ".json")
    except RuntimeError:
        return None  # no such dataset: nnU-Net says so
    if not isfile(plans_file):
        return None
    batch = load_json(plans_file).get("configurations", {}).get(args.configuration, {}).get("batch_size")
    if batch is None or batch >= world_size:
        return None
    return (f"{world_size} processes but a batch of {batch} in {plans_file} ({args.configuration}): nnU-Net gives "
            f"every process at least one crop of the plan's batch. Train with a plans file whose batch_size is at "
            f"least {world_size} (a copy under another name, then -p; docs/distributed.md), or start fewer processes")


def process_device(name: str, process: Optional[TorchrunProcess]) -> torch.device:
    """The device this process trains on, with nnUNetv2_train's thread settings."""
    if name == "cpu":
        if process is None:
            torch.set_num_threads(multiprocessing.cpu_count())  # as nnUNetv2_train
        elif "OMP_NUM_THREADS" not in os.environ:  # torchrun sets 1 where it starts several processes
            torch.set_num_threads(max(1, multiprocessing.cpu_count() // int(os.environ.get("LOCAL_WORLD_SIZE", 1))))
        return torch.device("cpu")
    if name == "mps":
        return torch.device("mps")
    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    if process is None:
        return torch.device("cuda")
    device = torch.device("cuda", process.local_rank)
    torch.cuda.set_device(device)
    return device


def join_process_group(device: torch.device) -> None:
    """The process group from torchrun's environment, and nnU-Net's DDP wrapper on the local device.

    nnU-Net's initialize() wraps the network as ``DDP(network, device_ids=[global rank])``: a CUDA index that
    only exists on the first node, and a device id that a CPU module refuses. The name it calls is replaced,
    for this process, by one that gives DDP the local device (none on the CPU)."""
    from torch.nn.parallel import DistributedDataParallel
    from nnunetv2.training.nnUNetTrainer import nnUNetTrainer as nnunet_trainer_module

    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def ddp_on_local_device(module, device_ids=None, **kwargs):
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None,
                                       **kwargs)

    nnunet_trainer_module.DDP = ddp_on_local_device


def train(args: argparse.Namespace, device: torch.device, argv: List[str]) -> int:
    """nnU-Net's single-process path of run_training, with the trainer on ``device`` and preemptible from its
    start (a signal during start-up ends the run once start-up is over, with the marker)."""
    preemption = PreemptibleTraining(argv)
    try:
        return _train(args, device, preemption)
    except Preempted as stop:
        print(f"{stop} (exit code {PREEMPTED_EXIT_CODE})", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    finally:
        preemption.restore_handlers()


def _train(args: argparse.Namespace, device: torch.device, preemption: PreemptibleTraining) -> int:
    from batchgenerators.utilities.file_and_folder_operations import join
    from nnunetv2.run.run_training import get_trainer_from_args, maybe_load_checkpoint
    from torch.backends import cudnn

    fold = args.fold if args.fold == "all" else int(args.fold)
    trainer = get_trainer_from_args(args.dataset_name_or_id, args.configuration, fold, args.tr, args.p, args.c,
                                    device=device)
    preemption.trainer = trainer
    if trainer.is_ddp:
        # nnU-Net's __init__ put every DDP rank on cuda:<global rank>; its gradient scaler exists for CUDA only
        trainer.device = device
        if device.type != "cuda":
            trainer.grad_scaler = None
    trainer.disable_checkpointing = args.disable_checkpointing
    # -pretrained_weights goes through pretrained_loading.load_pretrained_weights (safe, the local device), which
    # importing the trainer put in nnU-Net's place
    maybe_load_checkpoint(trainer, args.c, args.val, args.pretrained_weights)
    if args.c and trainer.local_rank == 0:
        clear_marker(trainer.output_folder)
    if device.type == "cuda":
        cudnn.deterministic = False
        cudnn.benchmark = True
    if not args.val:
        preemption.stop_if_received_during_startup()
        try:
            with preemption:
                trainer.run_training()
            preemption.stop_if_received_after_training()
        except Preempted:
            stop_data_loaders(trainer)
            raise
    if args.val_best:
        trainer.load_checkpoint(join(trainer.output_folder, "checkpoint_best.pth"))
    trainer.perform_actual_validation(args.npz)
    return 0


def stop_data_loaders(trainer) -> None:
    """What nnU-Net's on_train_end does to the background augmentation workers, for a run that stopped early."""
    for loader in (trainer.dataloader_train, trainer.dataloader_val):
        if hasattr(loader, "_finish"):
            loader._finish()


if __name__ == "__main__":
    sys.exit(main())
