"""What the tests share that is not a fixture: running the project's commands (in a new process or in this one)
and building a trainer on the test dataset in this process. Imported by the test files and by the scripts they run
in process (``python_in_process``)."""
import os
import subprocess

TEST_DATASET = "Dataset991_E2E"  # planned and preprocessed by the nnunet_env fixture (conftest.py)


def checked(result: subprocess.CompletedProcess, check: bool) -> subprocess.CompletedProcess:
    """``result``, or an AssertionError with the end of its output where ``check`` and it failed."""
    if check and result.returncode:
        raise AssertionError(f"{result.args} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def run(args, env, check=True):
    return checked(subprocess.run(args, env=env, capture_output=True, text=True, encoding="utf-8", errors="replace"),
                   check)


def run_in_process(entry, program, args, env):
    """``program ARGS`` with environment ``env``, through ``entry``, the function its console script calls,
    in this process: the same code path without the seconds a new interpreter spends importing torch and
    nnU-Net. Returns what ``run`` returns: ``entry``'s return value or SystemExit code as the exit code, an
    exception as a traceback on stderr and exit code 1, as the console script would end."""
    import contextlib
    import io
    import sys
    import traceback

    import torch
    saved_env, saved_argv, threads = dict(os.environ), sys.argv, torch.get_num_threads()
    out, err = io.StringIO(), io.StringIO()
    os.environ.clear()
    os.environ.update(env)
    sys.argv = [program, *args]  # the fine-tuning trainer reads -pretrained_weights there
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = entry() or 0
            except SystemExit as exit_:
                code = exit_.code if isinstance(exit_.code, int) else 1
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.environ.clear()
        os.environ.update(saved_env)
        sys.argv = saved_argv
        torch.set_num_threads(threads)  # nnUNetv2_train takes every core
    return subprocess.CompletedProcess([program, *args], code, out.getvalue(), err.getvalue())


def python_in_process(script, env, check=True):
    """``python -c SCRIPT`` in this process (see run_in_process), in a namespace of its own."""
    return checked(run_in_process(lambda: exec(compile(script, "<test script>", "exec"), {"__name__": "__main__"}),
                                  "python", [], env), check)


def nnunet_train_in_process(args, env, check=True):
    """``nnUNetv2_train ARGS`` in this process (see run_in_process)."""
    from nnunetv2.run.run_training import run_training_entry
    return checked(run_in_process(run_training_entry, "nnUNetv2_train", args, env), check)


def nnunet_mim_in_process(args, env, check=True):
    """``nnunet-mim ARGS`` in this process (see run_in_process)."""
    from nnunet_mim.cli import main
    return checked(run_in_process(main, "nnunet-mim", args, env), check)


def trainer_on_test_dataset(trainer_class, dataset: str = TEST_DATASET, started: bool = False,
                            plans: str = "nnUNetPlans"):
    """``trainer_class`` on fold "all" of a planned dataset and its ``plans``, on the CPU, as nnUNetv2_train builds
    it; ``started``: initialised, with its data loaders, at the start of its first epoch (ready for ``train_step``)."""
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.paths import nnUNet_preprocessed
    folder = os.path.join(nnUNet_preprocessed, dataset)
    planned = dict(load_json(os.path.join(folder, plans + ".json")), continue_training=False)
    trainer = trainer_class(planned, "3d_fullres", "all", load_json(os.path.join(folder, "dataset.json")),
                            torch.device("cpu"))
    if started:
        trainer.initialize()
        trainer.dataloader_train, trainer.dataloader_val = trainer.get_dataloaders()
        trainer.on_train_epoch_start()
    return trainer
