"""The MIDI reader's numba compile: the first process says it is compiling, and a second
process loads the cached machine code (no compile, no message): for a copy of the package
outside the repository whose cache goes to `NUMBA_CACHE_DIR`, and for a read-only copy
(numba's fallback: the user's cache folder)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

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


def _copy_package(root: Path) -> Path:
    """The package's sources (no compiled cache) under `root`; returns `root`."""
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(REPO_ROOT / "src" / "staria", root / "staria", ignore=ignore)
    return root


def _first_use_twice(package: Path, env: dict[str, str], prefix: tuple[str, ...] = ()) -> None:
    """Run the first MIDI read in two fresh processes (after `prefix`): the first says it
    compiles, the second neither compiles nor says so and takes under a quarter of the CPU."""
    code = FIRST_USE.format(root=str(package), midi=str(SMALL_MIDI["basic.mid"]))
    env = {**env, "PYTHONPATH": str(package)}
    runs = [
        subprocess.run(
            [*prefix, sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        for _ in range(2)
    ]
    for run in runs:
        assert run.returncode == 0, run.stderr[-2000:]
    assert NOTICE in runs[0].stderr and NOTICE not in runs[1].stderr
    first, second = (float(run.stdout.split()[-1]) for run in runs)
    print(f"first use {first:.2f} CPU-s, second process {second:.2f} CPU-s")  # shown by -rP
    assert second < first / 4, (first, second)


@pytest.mark.slow
def test_a_second_process_never_compiles_again(tmp_path):
    package = _copy_package(tmp_path / "pkg")
    _first_use_twice(package, {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba_cache")})
    assert any((tmp_path / "numba_cache").rglob("*.nbi")), "the machine code is cached"


def _read_only(package: Path) -> tuple[str, ...]:
    """A command prefix under which nothing can be written in `package`: for root, whom file
    modes do not stop, a read-only bind mount in a mount namespace of its own; else the modes."""
    if os.geteuid() != 0:
        for path in [package, *package.rglob("*")]:
            path.chmod(path.stat().st_mode & ~0o222)
        return ()
    remount = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    prefix = ["unshare", "--mount", "sh", "-c", remount, str(package)]
    probe = subprocess.run([*prefix, "touch", str(package / "probe")], capture_output=True)
    if probe.returncode == 0 or b"Read-only file system" not in probe.stderr:
        pytest.skip(f"no read-only mount for root here (unshare --mount: {probe.stderr[-200:]!r})")
    return tuple(prefix)


@pytest.mark.slow
def test_a_read_only_install_compiles_once_into_the_users_cache(tmp_path):
    package, home = _copy_package(tmp_path / "site-packages"), tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_CACHE_DIR", "XDG_CACHE_HOME")}
    _first_use_twice(package, {**env, "HOME": str(home)}, _read_only(package))
    assert any((home / ".cache" / "numba").rglob("*.nbi")), "cached in the user's cache folder"
    assert not any(package.rglob("*.nbi")), "nothing written beside the read-only sources"
