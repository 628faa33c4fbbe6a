"""Pre-training under DistributedDataParallel, the way nnU-Net's -num_gpus wraps it, in a real
two-process gloo group on the CPU: the U-Net decoder and the full-resolution stem take no part in the
masked forward, and DDP without find_unused_parameters stops at the second step when they are in its
graph. Three optimizer steps of two micro-steps each; both ranks must end with identical weights."""
import os
import sys

import torch

from conftest import run


def test_two_ranks_train_three_steps_and_agree(nnunet_env, tmp_path):
    worker = os.path.join(os.path.dirname(__file__), "ddp_pretraining_worker.py")
    env = dict(nnunet_env, OMP_NUM_THREADS="1")
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", worker,
         str(tmp_path)], env)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    for rank in ranks:
        assert rank["micro_batch"] == 1 and rank["accumulation"] == 2 and rank["optimizer_steps"] == 3
        assert rank["skipped"] == 0
    first, second = (rank["weights"] for rank in ranks)
    assert first.keys() == second.keys()
    differing = [k for k in first if not torch.equal(first[k], second[k])]
    assert not differing, differing
    # the run trained (it did not just keep rank 0's broadcast initial state): the encoder, the token
    # decoder and both projectors (the parent one as the child's moving average) moved; the frozen
    # stem and U-Net decoder did not
    moved = ranks[0]["moved"]
    for part in ("encoder.blocks.", "encoder.stages.", "reconstruction.", "alignment.child.", "alignment.parent."):
        assert any(k.startswith(part) for k in moved), part
    frozen = ("encoder.stem.", "decoder.stages.", "decoder.transpconvs.", "decoder.seg_layers.")
    assert not any(k.startswith(frozen) for k in moved)  # (decoder.encoder.* is the encoder, shared)
