"""`staria-train -m cluster=slurm ...` on the local cluster: sweeps, 2-node DDP, requeue-resume.

Every run is the installed console script submitting real training through the submitit
launcher; the multirun blocks until its jobs have results, so each runs under a timeout.
"""

import csv
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.utils import instantiate

from staria.paths import REPO_ROOT
from staria.training.checkpointing import HISTORY_FILE
from staria.training.resume import FINISHED_MARKER, WANDB_ID_FILE
from staria.training.runs_table import find_runs, read_run
from tests.harness import compose_config

pytestmark = pytest.mark.slurm

STARIA_TRAIN = Path(sys.executable).with_name("staria-train")
SWEEP_DIR = Path("runs/smoke")
SMALL_DATA = ("data.max_seq_len=128",)


@pytest.fixture(scope="module")
def data_cache(tmp_path_factory) -> Path:
    """The smoke runs' synthetic data, built once before any job reads it.

    Built here because two sweep points that both find no cache race to build it (the later
    one replaces the folder the other is indexing: `datamodule.synthetic_pieces`).
    """
    cache = tmp_path_factory.mktemp("data_cache")
    config = compose_config("train", "experiment=smoke", *SMALL_DATA)
    instantiate(config.data, cache_dir=str(cache)).prepare_data()
    return cache


def staria_train_on_slurm(
    cwd: Path, cluster, data_cache: Path, *overrides: str, timeout_s: float
) -> subprocess.CompletedProcess:
    """Run a smoke multirun on the cluster from `cwd`; cancel its jobs if it overruns."""
    job_name = f"staria-{cwd.name}"
    command = [
        str(STARIA_TRAIN),
        "-m",
        "cluster=slurm",
        "experiment=smoke",
        f"hydra.launcher.partition={cluster.partition}",
        f"hydra.launcher.name={job_name}",
        *SMALL_DATA,
        "print_config=false",
        *overrides,
    ]
    env = {
        **os.environ,
        "STARIA_DATA_CACHE": str(data_cache),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
    }
    try:
        run = subprocess.run(
            command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", f"--name={job_name}"], timeout=30, check=False)
        raise
    assert run.returncode == 0, run.stderr[-4000:]
    return run


def csv_metrics(run_dir: Path) -> list[list[dict]]:
    """Each (re)start's CSVLogger rows, in start order."""
    versions = sorted(
        (run_dir / "csv").glob("version_*"), key=lambda p: int(p.name.removeprefix("version_"))
    )
    # A start that logged nothing (it had no step left to train) has no metrics.csv.
    files = [version / "metrics.csv" for version in versions]
    return [list(csv.DictReader(f.open())) if f.is_file() else [] for f in files]


def runs_by(sweep_dir: Path, key: str) -> dict:
    """The sweep's run folders (runs/<name>/stage-<stage>-<signature>) by their value of `key`."""
    rows = [read_run(run) for run in find_runs([sweep_dir])]
    return {row.settings.get(key): row.folder for row in rows}


def only_run(sweep_dir: Path) -> Path:
    (run,) = find_runs([sweep_dir])
    return run


def train_losses(rows: list[dict]) -> list[tuple[int, float]]:
    return [(int(row["step"]), float(row["train/loss"])) for row in rows if row["train/loss"]]


def test_sweep_runs_each_point_as_an_array_task_and_a_resubmission_resumes(
    slurm_cluster, tmp_path, data_cache
):
    sweep = ("model.optimizer.lr=1e-4,3e-4", "hydra.launcher.timeout_min=5")
    staria_train_on_slurm(tmp_path, slurm_cluster, data_cache, *sweep, timeout_s=240)

    sweep_dir = tmp_path / SWEEP_DIR
    array_tasks = sorted(p.name for p in (sweep_dir / ".submitit").glob("[0-9]*_[0-9]*"))
    assert len(array_tasks) == 2 and array_tasks[0].split("_")[0] == array_tasks[1].split("_")[0]
    runs = runs_by(sweep_dir, "model.optimizer.lr")
    assert sorted(runs) == [1e-4, 3e-4]
    for run_dir in runs.values():
        assert json.loads((run_dir / FINISHED_MARKER).read_text())["global_step"] == 4
        assert (run_dir / "checkpoints" / "last.ckpt").is_file()

    # A crash after the last checkpoint of point 3e-4 (no finished marker): the same command
    # resumes it from last.ckpt without training again, and leaves finished point 1e-4 alone.
    (runs[3e-4] / FINISHED_MARKER).unlink()
    finished_0 = (runs[1e-4] / FINISHED_MARKER).stat().st_mtime_ns
    staria_train_on_slurm(tmp_path, slurm_cluster, data_cache, *sweep, timeout_s=240)
    assert runs_by(sweep_dir, "model.optimizer.lr") == runs
    assert (runs[1e-4] / FINISHED_MARKER).stat().st_mtime_ns == finished_0
    assert len(csv_metrics(runs[1e-4])) == 1
    resumed = csv_metrics(runs[3e-4])
    assert len(resumed) == 2 and not train_losses(resumed[1])
    assert json.loads((runs[3e-4] / FINISHED_MARKER).read_text())["global_step"] == 4


def test_two_node_ddp_with_gloo_trains_and_ranks_agree(slurm_cluster, tmp_path, data_cache):
    staria_train_on_slurm(
        tmp_path,
        slurm_cluster,
        data_cache,
        "trainer.num_nodes=2",
        "trainer.devices=1",
        "trainer.strategy=ddp",
        "hydra.launcher.timeout_min=5",
        "+callbacks.rank_report._target_=tests.slurm.training_probes.RankReport",
        timeout_s=240,
    )
    run_dir = only_run(tmp_path / SWEEP_DIR)
    reports = [json.loads((run_dir / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    assert {report["node"] for report in reports} == set(slurm_cluster.nodes)
    for rank, report in enumerate(reports):
        assert (report["global_rank"], report["world_size"]) == (rank, 2)
        assert (report["backend"], report["global_step"]) == ("gloo", 4)
    assert reports[0]["param_checksum"] == reports[1]["param_checksum"]
    assert json.loads((run_dir / FINISHED_MARKER).read_text())["global_step"] == 4


def test_job_past_its_time_limit_checkpoints_requeues_and_resumes(
    slurm_cluster, tmp_path, data_cache
):
    # 100 s of paced steps: the signal (at most 90 s in) always comes before the run finishes.
    # A validation lasts 2 x 45 s, longer than the 30 s between the signal and the time limit;
    # scheduled ones never come (val_check_interval > max_steps), so one run after the signal
    # (Lightning validates when a callback stops training) would outlast the window: the job
    # would be killed before requeueing and never finish.
    max_steps, step_s = 200, 0.5
    staria_train_on_slurm(
        tmp_path,
        slurm_cluster,
        data_cache,
        "logger=[csv,wandb]",
        "hydra.launcher.timeout_min=2",
        # USR2 60-90 s in; each signal counts as a timeout, so allow a second one in case the
        # resumed run is still training when its own signal comes.
        "hydra.launcher.signal_delay_s=30",
        "hydra.launcher.max_num_timeout=3",
        f"trainer.max_steps={max_steps}",
        "trainer.val_check_interval=1000",
        "trainer.log_every_n_steps=1",
        "callbacks.checkpointing.last_every_n_steps=50",
        "+callbacks.pace._target_=tests.slurm.training_probes.StepPace",
        f"+callbacks.pace.step_s={step_s}",
        "trainer.limit_val_batches=2",
        "+callbacks.validation_pace._target_=tests.slurm.training_probes.ValidationPace",
        "+callbacks.validation_pace.batch_s=45",
        timeout_s=400,
    )
    run_dir = only_run(tmp_path / SWEEP_DIR)
    assert json.loads((run_dir / FINISHED_MARKER).read_text())["global_step"] == max_steps
    assert not any(row.get("val/loss") for rows in csv_metrics(run_dir) for row in rows)

    # One CSV version per start: each start continues from the step the previous one reached.
    starts = [train_losses(rows) for rows in csv_metrics(run_dir)]
    assert len(starts) >= 2
    for previous, resumed in itertools.pairwise(starts):
        assert resumed[0][0] > 0 and resumed[0][0] >= previous[-1][0]
    assert starts[-1][-1][0] == max_steps - 1
    assert starts[1][0][1] < starts[0][0][1] - 0.5, "resumed loss is back at the initial loss"

    # The preempted start wrote last.ckpt at the step it reached, not only at a periodic save.
    history = json.loads((run_dir / "checkpoints" / HISTORY_FILE).read_text())
    preempted_at = starts[0][-1][0] + 1
    assert any(e["step"] == preempted_at and e["path"].endswith("last.ckpt") for e in history)

    run_id = (run_dir / WANDB_ID_FILE).read_text().strip()
    offline_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == len(starts)
    assert all(path.name.endswith(f"-{run_id}") for path in offline_runs)
