"""What a researcher sees: a smoke run piped to a file is short and readable, with step-based
progress lines that `train.log` holds too, and an interruption ends with the resume command."""

import re
import shlex
import subprocess

import pytest

from tests.harness import shrink
from tests.training.runs import run_staria_train

# The one shrink, the config summary printed as a researcher's run prints it.
TINY = ("experiment=smoke", *shrink("print_config=true"))


def staria_train(tmp_path, *overrides) -> subprocess.CompletedProcess:
    return run_staria_train(tmp_path, *TINY, *overrides, STARIA_DATA_CACHE=str(tmp_path / "cache"))


@pytest.mark.slow
def test_a_smoke_run_piped_to_a_file_prints_at_most_40_readable_lines(tmp_path):
    run = staria_train(tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    lines = (run.stdout + run.stderr).splitlines()
    assert len(lines) <= 40, "\n".join(lines)
    text = "\n".join(lines)
    assert "full config: " in text and "Epoch" not in text
    assert re.search(r"^step 4/4  loss \d", text, re.MULTILINE)
    assert re.search(r"^step 4/4  val/loss \d", text, re.MULTILINE)
    log = (tmp_path / "runs" / "smoke" / "stage-none" / "train.log").read_text()
    assert "step 4/4  val/loss" in log, "train.log holds the run's log"


@pytest.mark.slow
def test_an_interrupted_run_ends_with_the_command_that_resumes_it(tmp_path):
    signal_at_step = (
        "+callbacks.signal._target_=tests.training.runs.SignalAtStep",
        "+callbacks.signal.step=2",
        "+callbacks.signal.signal_name=SIGTERM",
    )
    run = staria_train(tmp_path, *signal_at_step)
    assert run.returncode == 75, run.stderr[-3000:]
    last = (run.stdout + run.stderr).strip().splitlines()[-1]
    assert "SIGTERM at step 3: last.ckpt saved; resume with: staria-train " in last
    run_dir = (tmp_path / "runs" / "smoke" / "stage-none").resolve()  # the newest run's link
    overrides = [*TINY, *signal_at_step, f"hydra.run.dir={run_dir}"]
    assert last.endswith(" ".join(shlex.quote(o) for o in overrides))
