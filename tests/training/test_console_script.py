"""The installed `staria-train` console script, run from a folder outside the repository."""

import json
import os
import subprocess
import sys
from pathlib import Path

from staria.training.resume import FINISHED_MARKER

STARIA_TRAIN = Path(sys.executable).with_name("staria-train")


def test_console_script_trains_from_any_working_directory(tmp_path):
    env = {**os.environ, "STARIA_DATA_CACHE": str(tmp_path / "data_cache")}
    command = [
        str(STARIA_TRAIN),
        "experiment=smoke",
        "trainer.max_steps=2",
        "data.max_seq_len=128",
        "logger=none",
        "print_config=false",
    ]
    run = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180
    )
    assert run.returncode == 0, run.stderr[-3000:]

    run_dir = tmp_path / "runs" / "smoke" / "stage-none"
    assert json.loads((run_dir / FINISHED_MARKER).read_text())["global_step"] == 2
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()


def test_a_wrong_command_exits_non_zero_naming_the_key_and_writes_nothing(tmp_path):
    env = {**os.environ, "STARIA_DATA_CACHE": str(tmp_path / "data_cache")}
    for override, named in (
        ("experiment=smok", "experiment/smok"),
        ("trainer.max_steps=abc", "trainer.max_steps"),
    ):
        extra = [] if override.startswith("experiment") else ["experiment=smoke"]
        run = subprocess.run(
            [str(STARIA_TRAIN), *extra, override, "logger=none"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert run.returncode != 0, override
        assert named in run.stdout + run.stderr, run.stderr[-3000:]
        written = [p for p in tmp_path.glob("runs/**/*") if p.is_file()]
        assert written == [], override  # Hydra may have made the (empty) folder, nothing more


def test_printing_the_config_or_the_help_imports_neither_torch_nor_lightning(tmp_path):
    """`--cfg job` and `--help` compose and print: the heavy libraries stay unloaded
    (`-X importtime` lists every module a process imports)."""
    for flags in (["experiment=smoke", "--cfg", "job"], ["--help"]):
        run = subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "staria.training.cli", *flags],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert run.returncode == 0, run.stderr[-3000:]
        imported = {
            line.rsplit("|", 1)[-1].strip()
            for line in run.stderr.splitlines()
            if line.startswith("import time:")
        }
        assert "hydra" in imported and "omegaconf" in imported, flags  # the listing works
        assert not imported & {"torch", "lightning", "numpy", "pretty_midi", "numba"}, flags
