"""The GPU check, run whole on the CPU at a tiny size (--cpu-dry-run): every part runs and reports, so the lent
GPU's minutes go to measuring; and the same from the offline bundle, installed with pip --no-index --no-deps
beside nothing but torch and the GPU image's packages (the slow tier: minutes each)."""
import glob
import os
import subprocess
import sys
import tarfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# what the lent GPU machines hold of what the check imports (torch 2.11 is theirs, and this project's floor)
GPU_IMAGE = ["torch==2.11.*", "torchvision==0.26.*", "timm<1.0.23", "numpy", "scipy", "scikit-image",
             "scikit-learn", "pandas", "matplotlib"]


def check_report(report: str) -> None:
    for title in ("Device", "Pre-training throughput and memory", "Fine-tuning step against ResEnc-M",
                  "torch.compile", "Through the commands"):
        assert f"## {title}" in report
    assert "failed:" not in report and "stopped at its time limit" not in report and "skipped:" not in report
    assert "| 64x64x64 | MiM | 1 |" in report and "| 32x64x64 | MAE | 1 |" in report
    assert "hybrid / ResEnc-M step time" in report and "| pretrain | compiled |" in report
    assert "(fell)" in report and "100.0% of the encoder loaded from MiM pre-training" in report
    assert "nnUNetv2_predict: 1 segmentation(s)" in report


@pytest.mark.slow
def test_the_gpu_check_runs_every_part_on_the_cpu(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "-o", str(tmp_path), "--cpu-dry-run",
                          "--minutes", "20"], capture_output=True, text=True, timeout=1500, cwd=REPO)
    assert out.returncode == 0, out.stderr[-2000:]
    check_report((tmp_path / "gpu_check.md").read_text())


@pytest.mark.slow
def test_the_offline_bundle_runs_the_check_beside_only_the_gpu_images_packages(tmp_path):
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([sys.executable, "benchmarks/gpu_bundle.py", "-o", str(tmp_path / "bundle"), "--python-version",
                    python], check=True, cwd=REPO, timeout=900)
    archive = tmp_path / "bundle" / "bundle.tar.xz"
    assert archive.stat().st_size <= 60 * 2 ** 20
    env_python = str(tmp_path / "image" / "bin" / "python")
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "image")], check=True)
    subprocess.run([env_python, "-m", "pip", "install", "--quiet", *GPU_IMAGE], check=True, timeout=900)
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "wheels", filter="data")
    site = tmp_path / "site"
    subprocess.run([env_python, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                    "--target", str(site), *glob.glob(str(tmp_path / "wheels" / "*.whl"))], check=True)
    env = dict(os.environ, PYTHONPATH=str(site), PATH=f"{site / 'bin'}{os.pathsep}{os.environ['PATH']}")
    env.pop("nnUNet_extTrainer", None)
    out = subprocess.run([env_python, "benchmarks/gpu_check.py", "-o", str(tmp_path / "out"), "--cpu-dry-run",
                          "--minutes", "20"], capture_output=True, text=True, timeout=1500, cwd=REPO, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    report = (tmp_path / "out" / "gpu_check.md").read_text()
    check_report(report)
    assert f"nnunet_mim from {site / 'nnunet_mim'}" in report  # the bundle's wheel, not this checkout
