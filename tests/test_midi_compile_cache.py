"""The MIDI reader's numba compile: the first process says it is compiling, and a second
process loads the cached machine code (no compile, no message), also for a copy of the package
outside the repository whose cache goes to `NUMBA_CACHE_DIR` (where numba puts it for a
read-only install)."""

import os
import shutil
import subprocess
import sys

import pytest

from staria.paths import REPO_ROOT
from tests.midi_oracle import SMALL_MIDI

NOTICE = "compiling the MIDI reader with numba"
FIRST_USE = """
import time, staria
assert staria.__file__.startswith({root!r}), staria.__file__
from staria.tokenizer.midi_io import read_notes
started = time.process_time()
read_notes({midi!r})
print(f"cpu {{time.process_time() - started:.2f}}")
"""


@pytest.mark.slow
def test_a_second_process_never_compiles_again(tmp_path):
    shutil.copytree(REPO_ROOT / "src" / "staria", tmp_path / "pkg" / "staria")
    midi = SMALL_MIDI["basic.mid"]
    code = FIRST_USE.format(root=str(tmp_path / "pkg"), midi=str(midi))
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path / "pkg"),
        "NUMBA_CACHE_DIR": str(tmp_path / "numba_cache"),
    }
    runs = [
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
        )
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    assert NOTICE in runs[0].stderr and NOTICE not in runs[1].stderr
    assert any((tmp_path / "numba_cache").rglob("*.nbi")), "the machine code is cached"
    first, second = (float(run.stdout.split()[-1]) for run in runs)
    assert second < first / 4, (first, second)
