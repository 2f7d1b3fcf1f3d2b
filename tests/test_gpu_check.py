"""`make gpu-check`'s script runs end to end on the tiny nets on CPU, so it is known to work
before a GPU is lent: every section prints a figure, none fails."""

import os
import subprocess
import sys

import pytest

from staria.paths import REPO_ROOT


@pytest.mark.slow
def test_the_gpu_check_runs_every_section_on_the_tiny_nets():
    script = REPO_ROOT / "benchmarks" / "gpu_check.py"
    run = subprocess.run(
        [sys.executable, str(script), "--tiny", "--device", "cpu", "--no-compile", "--steps", "1"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert "FAILED" not in run.stdout, run.stdout + run.stderr[-3000:]
    steps = [line for line in lines if "tokens/s" in line and "MFU" in line]
    assert len(steps) == 4  # baseline and Staria, flash off and on
    assert all("peak memory" in line for line in steps)
    assert sum("tokens/s  (" in line for line in lines) == 2  # generation at batch 1 and 16
