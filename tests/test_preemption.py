"""Preemption in one process (nnunet-mim train's single-process path; two nodes: tests/test_distributed.py): the
marker's command continues every run, a fine-tuning run started with -pretrained_weights too, and a signal during
start-up still leaves a marker."""
import json
import os

from helpers import nnunet_mim_in_process
from nnunet_mim.preemption import MARKER, PREEMPTED_EXIT_CODE, continue_args

SIGNALLING_TRAINERS = """
import os, signal, torch
from nnunet_mim.variants import nnUNetTrainerMAEPretrain_T_CPUsmoke, nnUNetTrainerMiMFinetune_T_CPUsmoke


class nnUNetTrainerMiMFinetune_SignalInFirstStep(nnUNetTrainerMiMFinetune_T_CPUsmoke):
    def train_step(self, batch):
        outputs = super().train_step(batch)
        if not os.path.exists(os.path.join(self.output_folder, "signalled")):
            open(os.path.join(self.output_folder, "signalled"), "w").close()
            os.kill(os.getpid(), signal.SIGTERM)  # as SLURM would, mid-epoch
        return outputs


class nnUNetTrainerMAEPretrain_SignalAtStartup(nnUNetTrainerMAEPretrain_T_CPUsmoke):
    def __init__(self, plans, configuration, fold, dataset_json, device=torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        os.kill(os.getpid(), signal.SIGTERM)  # before the dataset is read or the network built
"""


def test_the_continue_command_drops_pretrained_weights_once_a_checkpoint_exists(tmp_path):
    argv = ["991", "3d_fullres", "0", "-tr", "T", "-pretrained_weights", "/w.pth", "-device", "cpu"]
    assert continue_args(argv, str(tmp_path)) == argv  # nothing trained yet: start again, weights and all
    (tmp_path / "checkpoint_latest.pth").touch()
    assert continue_args(argv, str(tmp_path)) == ["991", "3d_fullres", "0", "-tr", "T", "-device", "cpu", "--c"]
    assert continue_args([*argv[:5], "--c"], str(tmp_path)) == [*argv[:5], "--c"]


def signalling_env(nnunet_env, tmp_path):
    folder = tmp_path / "trainers"
    folder.mkdir()
    (folder / "signalling_trainers.py").write_text(SIGNALLING_TRAINERS)
    return dict(nnunet_env, nnUNet_extTrainer=nnunet_env["nnUNet_extTrainer"] + os.pathsep + str(folder))


def run_folder(env, trainer):
    return os.path.join(env["nnUNet_results"], "Dataset991_E2E", f"{trainer}__nnUNetPlans__3d_fullres", "fold_all")


def test_a_preempted_fine_tuning_run_continues_with_the_markers_command(nnunet_env, tmp_path):
    """nnU-Net refuses -pretrained_weights beside --c: "the same command with --c" could never continue such a
    run, and a job script would requeue it forever. The marker's continue_args can."""
    from nnunet_mim.finetuning.checkpoint import load_checkpoint
    env = signalling_env(nnunet_env, tmp_path)
    trainer = "nnUNetTrainerMiMFinetune_SignalInFirstStep"
    pretrained = str(tmp_path / "pretrained.pth")
    started = nnunet_mim_in_process(["train", "991", "3d_fullres", "all", "-tr", "nnUNetTrainerMAEPretrain_T_CPUsmoke",
                                     "-device", "cpu"], env)
    assert started.returncode == 0
    os.link(os.path.join(run_folder(env, "nnUNetTrainerMAEPretrain_T_CPUsmoke"), "checkpoint_final.pth"), pretrained)
    assert load_checkpoint(pretrained)["network_weights"]
    argv = ["train", "991", "3d_fullres", "all", "-tr", trainer, "-device", "cpu", "-pretrained_weights", pretrained]
    stopped = nnunet_mim_in_process(argv, env, check=False)
    folder = run_folder(env, trainer)
    assert stopped.returncode == PREEMPTED_EXIT_CODE, stopped.stderr[-2000:]
    marker = json.load(open(os.path.join(folder, MARKER)))
    assert marker["continue_args"] == ["991", "3d_fullres", "all", "-tr", trainer, "-device", "cpu", "--c"]
    assert marker["continue_with"].startswith("nnunet-mim train 991 3d_fullres all")
    continued = nnunet_mim_in_process(["train", *marker["continue_args"]], env, check=False)
    assert continued.returncode == 0, continued.stderr[-2000:]
    assert os.path.isfile(os.path.join(folder, "checkpoint_final.pth")) and not os.path.exists(
        os.path.join(folder, MARKER))


def test_a_signal_during_start_up_leaves_a_marker_and_the_original_command(nnunet_env, tmp_path):
    env = signalling_env(nnunet_env, tmp_path)
    trainer = "nnUNetTrainerMAEPretrain_SignalAtStartup"
    argv = ["991", "3d_fullres", "all", "-tr", trainer, "-device", "cpu"]
    stopped = nnunet_mim_in_process(["train", *argv], env, check=False)
    assert stopped.returncode == PREEMPTED_EXIT_CODE and "during start-up" in stopped.stderr, stopped.stderr[-2000:]
    folder = run_folder(env, trainer)
    marker = json.load(open(os.path.join(folder, MARKER)))
    assert marker["continue_args"] == argv and "start-up" in marker["stopped"]
    assert not [f for f in os.listdir(folder) if f.endswith(".pth")]  # nothing trained, nothing written


def test_a_forked_data_loading_worker_dies_of_sigterm_as_it_would_without_the_handler():
    """Workers forked after the handlers were installed inherit them; a flag set in a worker stops nothing, so
    there the signal does what it did before: SIGTERM ends the worker."""
    import signal
    import time

    from nnunet_mim.preemption import PreemptibleTraining
    preemption = PreemptibleTraining([])
    try:
        pid = os.fork()
        if pid == 0:  # the worker
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(2)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
        assert preemption.received is None  # the training process itself was not asked to stop
    finally:
        preemption.restore_handlers()
