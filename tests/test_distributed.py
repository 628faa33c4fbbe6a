"""Several nodes through the real torchrun on the CPU (gloo): two simulated nodes of one process each
on localhost, `torchrun --nnodes 2 --node-rank 0|1 -m nnunet_mim.train ...`, as docs/distributed.md
runs them. The trainers (tests/distributed_trainers) save what every rank trained on and ended with.

Node 1 is given a results folder of its own, so that anything a rank other than global rank 0 writes
shows up there (on a cluster both would be one shared folder)."""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch

from helpers import run
from nnunet_mim.checkpointing import read_checkpoint
from nnunet_mim.preemption import MARKER, PREEMPTED_EXIT_CODE

TRAINERS = os.path.join(os.path.dirname(__file__), "distributed_trainers")
# nnU-Net's on_train_start copies these from every rank (besides, each rank exports its share of the
# final validation's cases): the writes nnU-Net does not leave to rank 0
NNUNET_COPIES_ON_EVERY_RANK = {"plans.json", "dataset.json", "dataset_fingerprint.json"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_nodes(envs, args, nodes=2, torchrun_args=()):
    """One torchrun per simulated node, one process each; envs[i] is node i's environment."""
    port = free_port()
    return [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", *torchrun_args, "--nnodes", str(nodes),
                              "--nproc-per-node", "1", "--node-rank", str(node), "--master-addr", "127.0.0.1",
                              "--master-port", str(port), "-m", "nnunet_mim.train", "991", "3d_fullres", "all",
                              "-device", "cpu", *args], env=envs[node], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, encoding="utf-8", errors="replace")
            for node in range(nodes)]


def finish(processes, timeout=300):
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    return [p.returncode for p in processes], outputs


def run_nodes(envs, args):
    codes, outputs = finish(start_nodes(envs, args))
    assert codes == [0, 0], "\n".join(o[-4000:] for o in outputs)
    return outputs


def files_under(folder):
    return {os.path.relpath(os.path.join(d, f), folder) for d, _, files in os.walk(folder) for f in files}


def records(folder, trainer, ranks):
    return [torch.load(os.path.join(folder, f"{trainer}_rank{r}.pt"), weights_only=False) for r in ranks]


@pytest.fixture(scope="module")
def node_envs(nnunet_env, tmp_path_factory):
    """Both nodes' environments: node 1 with its own results folder; rank records in a folder per node."""
    envs = []
    for node in (0, 1):
        folder = tmp_path_factory.mktemp(f"node{node}")
        (folder / "results").mkdir()
        (folder / "records").mkdir()
        envs.append(dict(nnunet_env, OMP_NUM_THREADS="1", NNUNET_MIM_TEST_RANK_RECORDS=str(folder / "records"),
                         nnUNet_extTrainer=os.pathsep.join([nnunet_env["nnUNet_extTrainer"], TRAINERS]),
                         nnUNet_results=str(folder / "results") if node else nnunet_env["nnUNet_results"]))
    return envs


@pytest.fixture(scope="module")
def pretrained_on_two_nodes(node_envs):
    outputs = run_nodes(node_envs, ["-tr", "nnUNetTrainerMiMPretrain_RankRecord"])
    folder = os.path.join(node_envs[0]["nnUNet_results"], "Dataset991_E2E",
                          "nnUNetTrainerMiMPretrain_RankRecord__nnUNetPlans__3d_fullres", "fold_all")
    return folder, outputs


def test_mim_pretraining_on_two_nodes_agrees_across_ranks_and_matches_one_process(node_envs, pretrained_on_two_nodes,
                                                                                  tmp_path):
    folder, _ = pretrained_on_two_nodes
    trainer = "nnUNetTrainerMiMPretrain_RankRecord"
    ranks = [*records(node_envs[0]["NNUNET_MIM_TEST_RANK_RECORDS"], trainer, [0]),
             *records(node_envs[1]["NNUNET_MIM_TEST_RANK_RECORDS"], trainer, [1])]
    for rank in ranks:  # the plan's batch of 2 split over the ranks; three optimizer steps of two micro-steps
        assert rank["world_size"] == 2 and rank["micro_batch"] == 1 and rank["device"] == "cpu"
        assert len(rank["batches"]) == 6 and rank["skipped"] == 0
        assert rank["accumulation"] == 2 and rank["optimizer_steps"] == 3
    first, second = (rank["final"] for rank in ranks)
    assert [k for k in first if not torch.equal(first[k], second[k])] == []
    # DDP ran without find_unused_parameters although the U-Net decoder and the stem take no part in the
    # masked forward; the run trained (the encoder, the token decoder and both projectors moved) and the
    # frozen parts did not
    moved = [k for k in first if not torch.equal(first[k], ranks[0]["initial"][k])]
    for part in ("encoder.blocks.", "encoder.stages.", "reconstruction.", "alignment.child.", "alignment.parent."):
        assert any(k.startswith(part) for k in moved), part
    assert not any(k.startswith(("encoder.stem.", "decoder.stages.", "decoder.transpconvs.")) for k in moved)
    # each rank drew its own stream of crops (seeded by the global rank; a patch this size covers the whole
    # small image, so single batches can repeat, the sequence cannot)
    assert ranks[0]["batches"] != ranks[1]["batches"]
    # global rank 0 wrote the run; on node 1 nothing but nnU-Net's copies of the plans
    saved = read_checkpoint(os.path.join(folder, "checkpoint_final.pth"))["network_weights"]
    assert all(torch.equal(saved[k], first[k]) for k in saved)
    written_by_rank1 = files_under(node_envs[1]["nnUNet_results"])
    assert {os.path.basename(f) for f in written_by_rank1} <= NNUNET_COPIES_ON_EVERY_RANK, written_by_rank1
    # one process, same global batch (micro-batch 2): the same recipe, a first-epoch loss within 5%
    alone = dict(node_envs[0], nnUNet_results=str(tmp_path), NNUNET_MIM_TEST_RANK_RECORDS=str(tmp_path))
    run([sys.executable, "-m", "nnunet_mim.train", "991", "3d_fullres", "all", "-tr", trainer, "-device", "cpu"], alone)
    (single,) = records(str(tmp_path), trainer, [0])
    assert single["micro_batch"] == 2 and len(single["batches"]) == 6 and single["accumulation"] == 2
    assert single["train_losses"][0] == pytest.approx(ranks[0]["train_losses"][0], rel=0.05)
    assert ranks[0]["train_losses"] == ranks[1]["train_losses"]  # the logged loss is the mean over ranks


def test_finetuning_on_two_nodes_from_pretrained_weights(node_envs, pretrained_on_two_nodes):
    folder, _ = pretrained_on_two_nodes
    trainer = "nnUNetTrainerMiMFinetune_RankRecord"
    checkpoint = os.path.join(folder, "checkpoint_final.pth")
    outputs = run_nodes(node_envs, ["-tr", trainer, "-pretrained_weights", checkpoint])
    assert "encoder tensors loaded: 100.0%" in outputs[0]
    ranks = [*records(node_envs[0]["NNUNET_MIM_TEST_RANK_RECORDS"], trainer, [0]),
             *records(node_envs[1]["NNUNET_MIM_TEST_RANK_RECORDS"], trainer, [1])]
    pretrained = read_checkpoint(checkpoint)["network_weights"]
    for rank in ranks:  # every rank started from the pre-trained encoder
        encoder = {k: v for k, v in rank["initial"].items() if k.startswith("encoder.")}
        assert encoder and all(torch.equal(v, pretrained[k]) for k, v in encoder.items())
    first, second = (rank["final"] for rank in ranks)
    assert [k for k in first if not torch.equal(first[k], second[k])] == []
    # nnU-Net's final validation ran split over both ranks; rank 0 wrote its summary
    results = os.path.join(node_envs[0]["nnUNet_results"], "Dataset991_E2E",
                           f"{trainer}__nnUNetPlans__3d_fullres", "fold_all")
    assert os.path.isfile(os.path.join(results, "validation", "summary.json"))
    # rank 1 wrote nnU-Net's copies of the plans and its share of the validation cases, nothing else
    written_by_rank1 = files_under(node_envs[1]["nnUNet_results"])
    predicted_by_rank1 = {os.path.basename(f) for f in written_by_rank1 if "/fold_all/validation/" in f}
    assert {os.path.basename(f) for f in written_by_rank1} - predicted_by_rank1 <= NNUNET_COPIES_ON_EVERY_RANK
    predicted_by_rank0 = {f for f in os.listdir(os.path.join(results, "validation")) if f.endswith(".nii.gz")}
    assert predicted_by_rank1 and not predicted_by_rank0 & predicted_by_rank1
    assert len(predicted_by_rank0 | predicted_by_rank1) == 5 and all(f.endswith(".nii.gz") for f in predicted_by_rank1)


def test_sigusr1_stops_a_stock_trainer_with_a_checkpoint_and_c_continues_it(node_envs, tmp_path):
    """As SLURM's --signal=USR1@120 does: the signal reaches both torchrun agents, which pass it to their
    worker (--signals-to-handle). nnU-Net's own trainer (nnUNetTrainerStockCNN is
    nnUNetTrainer with its length set) through the same launcher; continued on one node."""
    trainer = "nnUNetTrainerStockCNN_RankRecord"
    shared = str(tmp_path / "results")  # both nodes write to one results folder here, as on a cluster
    envs = [dict(env, nnUNet_results=shared) for env in node_envs]
    folder = os.path.join(shared, "Dataset991_E2E", f"{trainer}__nnUNetPlans__3d_fullres", "fold_all")
    nodes = start_nodes(envs, ["-tr", trainer], torchrun_args=["--signals-to-handle", "SIGTERM,SIGINT,SIGUSR1"])
    deadline = time.time() + 240
    while time.time() < deadline and not any("Epoch 1" in open(os.path.join(folder, f)).read()
                                             for f in (os.listdir(folder) if os.path.isdir(folder) else [])
                                             if f.startswith("training_log")):
        assert all(node.poll() is None for node in nodes), "the run ended before it was signalled"
        time.sleep(0.2)
    for node in nodes:
        node.send_signal(signal.SIGUSR1)
    codes, outputs = finish(nodes)
    # torchrun itself ends with its own error on a signal it forwarded: preempted.json tells a job script
    assert all(code != 0 for code in codes)
    for output in outputs:  # every rank stopped at the same step, and said so
        assert "stopped by SIGUSR1" in output and f"(exit code {PREEMPTED_EXIT_CODE})" in output, output[-3000:]
    checkpoint = read_checkpoint(os.path.join(folder, "checkpoint_latest.pth"))
    epoch = checkpoint["current_epoch"]  # the epoch --c runs again: the one that was interrupted
    assert epoch in (1, 2) and not os.path.exists(os.path.join(folder, "checkpoint_final.pth"))
    assert all(len(values) == epoch for values in checkpoint["logging"].values())  # whole epochs only
    assert os.path.isfile(os.path.join(folder, MARKER))
    # continued on one node of one process: the plan's global batch on one rank
    resumed = dict(envs[0], NNUNET_MIM_TEST_RANK_RECORDS=str(tmp_path))
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1", "-m",
         "nnunet_mim.train", "991", "3d_fullres", "all", "-device", "cpu", "-tr", trainer, "--c"], resumed)
    (record,) = records(str(tmp_path), trainer, [0])
    assert record["started_at_epoch"] == epoch and record["world_size"] == 1 and record["micro_batch"] == 2
    assert len(record["train_losses"]) == 3
    assert all(torch.equal(record["initial"][k], v) for k, v in checkpoint["network_weights"].items())
    assert os.path.isfile(os.path.join(folder, "checkpoint_final.pth")) and not os.path.exists(
        os.path.join(folder, MARKER))
    assert os.path.isfile(os.path.join(folder, "validation", "summary.json"))


@pytest.mark.parametrize("world_size, args, message", [
    ("1", ["-num_gpus", "2"], "torchrun starts the processes"),
    ("4", ["-tr", "nnUNetTrainerMiMPretrain"], "4 processes but a batch of 2"),  # the e2e plan's batch
])
def test_what_torchrun_cannot_run_is_refused_before_any_work(nnunet_env, world_size, args, message):
    env = dict(nnunet_env, RANK="0", LOCAL_RANK="0", WORLD_SIZE=world_size)
    refused = run([sys.executable, "-m", "nnunet_mim.cli", "train", "991", "3d_fullres", "all", "-device", "cpu",
                   *args], env, check=False)
    assert refused.returncode == 2 and message in refused.stderr and "Traceback" not in refused.stderr
