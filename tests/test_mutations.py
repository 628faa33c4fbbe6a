"""The mutation catalogue (benchmarks/mutations.py) in the slow tier: every plausible bug it lists applied to a
copy of the repository, the tests it names run against it; at least 90% must be killed (about 20 minutes)."""
import os
import re
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(__file__), "..", "benchmarks", "mutations.py")


def kill_rate(*args: str):
    out = subprocess.run([sys.executable, SCRIPT, *args], capture_output=True, text=True, timeout=3600)
    assert out.returncode == 0, out.stderr[-2000:]
    killed, total = map(int, re.search(r"killed (\d+) of (\d+)", out.stdout).groups())
    return killed, total, out.stdout


@pytest.mark.slow
def test_the_tests_kill_at_least_nine_in_ten_of_the_catalogued_bugs():
    killed, total, report = kill_rate("--baseline")
    assert "baseline (no mutation): passed" in report
    assert killed >= 0.9 * total, report
