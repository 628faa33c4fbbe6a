"""The GPU check, run whole on the CPU at a tiny size (--cpu-dry-run): every part runs and reports, so the
lent GPU's minutes go to measuring (about 6 minutes on 2 cores: the slow tier)."""
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_the_gpu_check_runs_every_part_on_the_cpu(tmp_path):
    out = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "-o", str(tmp_path), "--cpu-dry-run",
                          "--minutes", "15"], capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-2000:]
    report = (tmp_path / "gpu_check.md").read_text()
    for title in ("Pre-training throughput", "Largest micro-batch", "Fine-tuning step against ResEnc-M",
                  "torch.compile", "Through the commands"):
        assert f"## {title}" in report
    assert "failed:" not in report and "stopped at its time limit" not in report and "skipped:" not in report
    assert "| 64^3 | MiM |" in report and "micro-batches that fit [1]" in report
    assert "hybrid / ResEnc-M step time" in report and "| finetune | compiled |" in report
    assert "(fell)" in report and "100.0% of the encoder loaded from MiM pre-training" in report
    assert "nnUNetv2_predict: 1 segmentation(s)" in report
