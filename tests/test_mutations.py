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


def test_every_catalogued_bug_still_applies_to_the_code():
    """A refactor that moves or rewords a line the catalogue patches would leave that bug untested, silently: each
    mutation's text must occur exactly once in its file, and each test it names must exist."""
    sys.path.insert(0, os.path.dirname(SCRIPT))
    try:
        from mutations import CATALOGUE
    finally:
        sys.path.pop(0)
    root = os.path.join(os.path.dirname(__file__), "..")
    for mutation in CATALOGUE:
        with open(os.path.join(root, mutation.path)) as f:
            assert f.read().count(mutation.old) == 1, (mutation.name, mutation.path)
        for test in mutation.tests:
            path, _, name = test.partition("::")
            with open(os.path.join(root, path)) as f:
                assert not name or f"def {name}(" in f.read(), (mutation.name, test)
