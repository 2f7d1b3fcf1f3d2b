"""Real signals to a real `staria-train` process: SIGKILL at random moments (and inside
checkpoint writes), and SIGTERM to the whole process group (DataLoader workers, DDP ranks).

After every kill the same command is run again, until one run ends; the final weights, step
and checkpoint folder must equal an uninterrupted run's. The seed of the random moments is
printed on failure (set STARIA_KILL_SEED to replay one).
"""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from staria.paths import REPO_ROOT
from staria.training.checkpointing import HISTORY_FILE, LAST_CHECKPOINT
from staria.training.resume import FINISHED_MARKER, resume_point
from staria.training.train import EXIT_INTERRUPTED
from tests.processes import descendants, gone_within

KILLABLE = Path(__file__).with_name("killable_run.py")
OVERRIDES = (
    "experiment=smoke",
    "logger=none",
    "print_config=false",
    "data.max_seq_len=128",
    "trainer.max_steps=8",
)
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def environment(tmp_path_factory) -> dict[str, str]:
    return {
        **os.environ,
        "STARIA_DATA_CACHE": str(tmp_path_factory.mktemp("data_cache")),
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(REPO_ROOT),
    }


def command(run_dir: Path, mode: str = "none", count: int = 0, *extra: str) -> list[str]:
    return [
        sys.executable,
        str(KILLABLE),
        mode,
        str(count),
        *OVERRIDES,
        f"hydra.run.dir={run_dir}",
        *extra,
    ]


def run(run_dir: Path, environment, mode="none", count=0, kill_after_s=None):
    """One attempt; SIGKILL after `kill_after_s` if it is still running then."""
    process = subprocess.Popen(
        command(run_dir, mode, count),
        cwd=run_dir.parent,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        output, _ = process.communicate(timeout=kill_after_s or TIMEOUT_S)
    except subprocess.TimeoutExpired:
        if kill_after_s is None:
            raise
        process.kill()
        output, _ = process.communicate()
    return process.returncode, output


def final_state(run_dir: Path) -> tuple[int, dict, set[str]]:
    last = torch.load(run_dir / "checkpoints" / LAST_CHECKPOINT)
    names = {p.name for p in (run_dir / "checkpoints").iterdir()}
    return last["global_step"], last["state_dict"], names


@pytest.fixture(scope="module")
def reference(tmp_path_factory, environment):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    started = time.monotonic()
    code, output = run(run_dir, environment)
    assert code == 0, output
    return final_state(run_dir), time.monotonic() - started


def assert_same(state, reference_state, context: str) -> None:
    step, weights, names = state
    ref_step, ref_weights, ref_names = reference_state
    assert step == ref_step == 8, context
    assert names == ref_names, context
    for key, value in ref_weights.items():
        torch.testing.assert_close(weights[key], value, rtol=0, atol=0, msg=f"{key}; {context}")


@pytest.mark.slow
def test_kills_at_random_moments_and_inside_writes_change_nothing(tmp_path, environment, reference):
    reference_state, duration_s = reference
    seed = int(os.environ.get("STARIA_KILL_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    plan = [("none", 0, rng.uniform(0.3, 1.0) * duration_s) for _ in range(3)]
    plan += [(mode, rng.randint(1, 9), None) for mode in ("mid-write", "before-rename")]
    plan += [(rng.choice(["mid-write", "before-rename"]), rng.randint(1, 9), None)]
    rng.shuffle(plan)
    run_dir = tmp_path / "run"
    log = []
    for mode, count, after_s in plan:
        code, output = run(run_dir, environment, mode, count, after_s)
        log.append(f"{mode}#{count}@{after_s and round(after_s, 1)}s -> {code}")
        assert code in (0, -signal.SIGKILL), f"seed {seed}, {log}:\n{output[-3000:]}"
        assert not list(run_dir.glob("checkpoints/last-v*.ckpt")), f"seed {seed}, {log}"
    code, output = run(run_dir, environment)  # the same command, to the end
    assert code == 0, f"seed {seed}, {log}:\n{output[-3000:]}"
    assert (run_dir / FINISHED_MARKER).is_file()
    assert_same(final_state(run_dir), reference_state, f"seed {seed}, kills {log}")


def signal_the_group_once_it_checkpointed(run_dir: Path, environment, *overrides: str):
    """Start `staria-train` in its own session, SIGTERM the whole group (what SLURM and
    `kill -- -<pgid>` do) once its first checkpoint is written; (exit status, output, pids)."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "staria.training.cli",
            *OVERRIDES,
            f"hydra.run.dir={run_dir}",
            "trainer.max_steps=400",
            "callbacks.checkpointing.last_every_n_steps=1000",
            *overrides,
        ],
        cwd=run_dir.parent,
        env=environment,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    history = run_dir / "checkpoints" / HISTORY_FILE
    deadline = time.monotonic() + TIMEOUT_S
    while not history.is_file():  # the first validation (step 2) wrote a checkpoint
        assert process.poll() is None and time.monotonic() < deadline, process.stdout.read()
        time.sleep(0.2)
    group = {process.pid, *descendants(process.pid)}
    os.killpg(process.pid, signal.SIGTERM)
    output, _ = process.communicate(timeout=TIMEOUT_S)
    return process.returncode, output, group


@pytest.mark.slow
@pytest.mark.parametrize(
    ("overrides", "processes"),
    [(("data.num_workers=2",), 3), (("trainer.devices=2", "trainer.strategy=ddp"), 2)],
    ids=["dataloader-workers", "two-ddp-ranks"],
)
def test_sigterm_to_the_process_group_saves_and_stops_every_process(
    tmp_path, environment, overrides, processes
):
    run_dir = tmp_path / "run"
    code, output, group = signal_the_group_once_it_checkpointed(run_dir, environment, *overrides)
    assert len(group) >= processes, "the main process and its workers or other rank"
    assert code == EXIT_INTERRUPTED, output[-3000:]
    assert "killed by signal" not in output and "Traceback" not in output, output[-3000:]
    assert "resume with: staria-train" in output
    assert gone_within(group, 30), "every rank and worker ended"
    point = resume_point(run_dir, run_dir / "checkpoints")
    assert point.checkpoint is not None and point.checkpoint.name == LAST_CHECKPOINT
    assert torch.load(point.checkpoint)["global_step"] >= 2
