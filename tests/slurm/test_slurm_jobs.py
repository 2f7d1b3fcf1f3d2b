"""Jobs on the local two-node cluster: plain sbatch, submitit, two nodes, timeout and requeue."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cloudpickle
import pytest
import submitit

pytestmark = pytest.mark.slurm

# Jobs unpickle these functions in a fresh interpreter that cannot import this test module.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def square_where(number: int) -> tuple[int, str, str]:
    return number * number, os.environ["SLURMD_NODENAME"], socket.gethostname()


def node_of_this_task() -> tuple[int, int, str]:
    env = submitit.JobEnvironment()
    return env.global_rank, int(os.environ["SLURM_NODEID"]), os.environ["SLURMD_NODENAME"]


class CountSeconds(submitit.helpers.Checkpointable):
    """Counts one step a second up to total_steps, resuming from a checkpoint file.

    Every run appends "<SLURM_RESTART_COUNT> <first step>" to runs.log, so a test can see
    whether a requeued run started where the signalled one stopped.
    """

    def __init__(self, total_steps: int, workdir: Path) -> None:
        self.total_steps = total_steps
        self.workdir = workdir
        self.step = 0

    def __call__(self) -> int:
        checkpoint_file = self.workdir / "step.ckpt"
        if checkpoint_file.exists():
            self.step = int(checkpoint_file.read_text())
        with (self.workdir / "runs.log").open("a") as runs:
            runs.write(f"{os.environ.get('SLURM_RESTART_COUNT', '0')} {self.step}\n")
        while self.step < self.total_steps:
            time.sleep(1)
            self.step += 1
        return self.step

    def checkpoint(self) -> submitit.helpers.DelayedSubmission:
        """Save the step to disk and requeue a fresh counter, so only the file carries state."""
        (self.workdir / "step.ckpt").write_text(str(self.step))
        return submitit.helpers.DelayedSubmission(CountSeconds(self.total_steps, self.workdir))


def test_sbatch_wrap_runs_a_shell_command(slurm_cluster, tmp_path):
    output = tmp_path / "wrap.out"
    submitted = subprocess.run(
        ["sbatch", "--parsable", f"--output={output}", "--wrap", "echo ran on $SLURMD_NODENAME"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    job_id = submitted.stdout.strip().split(";")[0]

    assert slurm_cluster.wait(job_id, timeout_s=60) == "COMPLETED"
    node = output.read_text().split()[-1]
    assert node in slurm_cluster.nodes


def test_submitit_job_returns_its_result(slurm_cluster, submitit_folder):
    job = slurm_cluster.executor(submitit_folder).submit(square_where, 7)

    squared, node, host = slurm_cluster.result(job, timeout_s=60)

    assert squared == 49
    assert node in slurm_cluster.nodes
    assert host == socket.gethostname()


def test_two_node_job_runs_one_task_on_each_node(slurm_cluster, submitit_folder):
    executor = slurm_cluster.executor(submitit_folder, nodes=2, tasks_per_node=1)
    job = executor.submit(node_of_this_task)

    placements = slurm_cluster.results(job, timeout_s=60)

    assert [rank for rank, _, _ in placements] == [0, 1]
    assert sorted(node_id for _, node_id, _ in placements) == [0, 1]
    assert sorted(node for _, _, node in placements) == sorted(slurm_cluster.nodes)


@pytest.mark.slow
def test_timed_out_job_checkpoints_requeues_and_finishes(slurm_cluster, submitit_folder, tmp_path):
    # SLURM checks limits every 30 s, so USR2 comes 30-60 s before a 2-minute limit, 60-90 s
    # in: the first run cannot reach 95 steps, and the requeued run (at most 36 steps) ends
    # before it would be signalled again, which max_num_timeout=1 would turn into a failure.
    total_steps = 95
    executor = slurm_cluster.executor(
        submitit_folder, max_num_timeout=1, timeout_min=2, slurm_signal_delay_s=30
    )
    started = time.monotonic()
    job = executor.submit(CountSeconds(total_steps, tmp_path))

    final_step = slurm_cluster.result(job, timeout_s=300)

    elapsed_s = time.monotonic() - started
    runs_log = (tmp_path / "runs.log").read_text().splitlines()
    runs = [tuple(map(int, line.split())) for line in runs_log]
    checkpointed_step = int((tmp_path / "step.ckpt").read_text())
    assert final_step == total_steps
    assert runs == [(0, 0), (1, checkpointed_step)]
    assert 55 <= checkpointed_step < total_steps
    assert slurm_cluster.job_record(job.job_id)["Restarts"] == "1"
    print(f"signalled at step {checkpointed_step}, finished after {elapsed_s:.0f} s")
