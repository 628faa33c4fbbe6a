"""The pre-training trainer's reductions over ranks, in a real 2-process group (gloo, CPU): the
epoch means cover every rank's steps, and a non-finite loss on one rank skips the step on all of
them (otherwise the ranks that step would wait forever in the gradient all-reduce). The GPU/NCCL
path of nnU-Net's -num_gpus is not exercised here."""
import os
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nnunet_mim.pretraining.trainer import nnUNetTrainerMiMPretrain


def worker(rank: int, port: int, results) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    trainer = SimpleNamespace(is_ddp=True)
    outputs = [{"loss": 1.0 + rank}, {"loss": 3.0 + rank}] if rank == 0 else [{"loss": np.nan}, {"loss": 5.0}]
    mean = nnUNetTrainerMiMPretrain._mean_over_ranks(trainer, outputs, "loss")
    loss = torch.tensor(float("inf") if rank == 1 else 1.0)
    finite = nnUNetTrainerMiMPretrain._finite_on_all_ranks(trainer, loss)
    results[rank] = (mean, finite)
    dist.destroy_process_group()


def test_reductions_over_two_ranks():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(worker, args=(port, results), nprocs=2, join=True)
    for rank in (0, 1):
        mean, finite = results[rank]
        assert mean == (1.0 + 3.0 + 5.0) / 3  # every rank's steps, the skipped (nan) one left out
        assert finite is False  # rank 1's inf stops the step on rank 0 too
