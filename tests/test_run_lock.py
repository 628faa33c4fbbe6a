"""Two runs on one output folder at once: the second refuses, naming the first, and changes nothing; once
the first has ended (however it ended), the folder is free again."""
import os
import subprocess
import sys

import pytest

HOLD = """
import sys, time
from nnunet_mim.run_lock import exclusive_run
with exclusive_run(sys.argv[1], "the folder"):
    print("held", flush=True)
    time.sleep(60)
"""


@pytest.fixture
def holder():
    """Starts a second process that holds a lock file until the test ends (killed, as a preempted run is)."""
    processes = []

    def hold(lock_file):
        process = subprocess.Popen([sys.executable, "-c", HOLD, lock_file], stdout=subprocess.PIPE, text=True)
        assert process.stdout.readline().strip() == "held"
        processes.append(process)
        return process

    yield hold
    for process in processes:
        process.kill()
        process.wait()


def test_a_second_benchmark_on_the_same_work_folder_refuses_naming_the_first(tmp_path, holder, capsys):
    from nnunet_mim.cli import main
    from nnunet_mim.run_lock import RUN_LOCK
    work = tmp_path / "work"
    first = holder(str(work / RUN_LOCK))
    before = sorted(os.listdir(work))
    assert main(["benchmark", "999", "--work-folder", str(work)]) == 1
    error = capsys.readouterr().err
    assert f"is being written by process {first.pid}" in error and "nothing was changed" in error
    assert sorted(os.listdir(work)) == before
    first.kill()
    first.wait()
    assert main(["benchmark", "999", "--work-folder", str(work)]) == 1  # free again: on to its own checks
    assert "is being written" not in capsys.readouterr().err


def test_a_second_collection_build_refuses_before_any_work(tmp_path, holder, monkeypatch):
    from nnunet_mim.data import collection
    from nnunet_mim.run_lock import FolderInUse
    folder = tmp_path / "Dataset801_PretrainCT"
    monkeypatch.setattr(collection, "dataset_folder", lambda dataset_id, name: str(folder))
    monkeypatch.setattr(collection, "build", lambda *args: pytest.fail("built while another run held the folder"))
    first = holder(str(tmp_path / ".Dataset801.lock"))  # one lock per dataset ID, whatever the name
    with pytest.raises(FolderInUse, match=f"process {first.pid}"):
        collection.create(801, "PretrainCT", [str(tmp_path)], collection.CollectionSettings())
    assert not folder.exists()


def test_a_lock_path_that_is_a_folder_is_explained(tmp_path):
    from nnunet_mim.run_lock import FolderInUse, exclusive_run
    (tmp_path / "lock").mkdir()
    with pytest.raises(FolderInUse, match="is a folder: remove it"):
        with exclusive_run(str(tmp_path / "lock"), str(tmp_path)):
            pass


def test_a_corrupt_checkpoint_leaves_its_run_out_of_the_curves_with_a_warning(tmp_path, capsys):
    from nnunet_mim.learning_curves import curve_rows
    (tmp_path / "checkpoint_final.pth").write_bytes(b"not a checkpoint")
    assert curve_rows(str(tmp_path), "MiM", 0.1, 0) == []
    assert "no learning curve for" in capsys.readouterr().err
