"""Fixtures for tests on the local SLURM cluster that `make slurm-up` starts.

The cluster has no accounting (no sacct), so submitit cannot tell that a job died without a
result and `job.result()` would wait forever: every wait here goes through
`SlurmCluster.result` / `SlurmCluster.wait`, which read the job state from scontrol and give up
after a timeout.
"""

import os
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import submitit

REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_DIR = Path(os.environ.get("STARIA_SLURM_DIR", REPO_ROOT / ".slurm"))
TERMINAL_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "TIMEOUT",
    }
)


class JobTimeoutError(TimeoutError):
    """A SLURM job did not reach a terminal state in time (it is cancelled when raised)."""


@dataclass(frozen=True)
class SlurmCluster:
    """The running local cluster: where to submit, and bounded waits for jobs."""

    partition: str
    nodes: tuple[str, ...]

    def job_record(self, job_id: str) -> dict[str, str]:
        """scontrol's fields for a job; empty once SLURM has forgotten it (MinJobAge)."""
        shown = subprocess.run(
            ["scontrol", "show", "job", "--oneliner", job_id],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if shown.returncode != 0:
            return {}
        return dict(re.findall(r"(\w+)=(\S*)", shown.stdout))

    def job_state(self, job_id: str) -> str:
        """The job's state (PENDING, RUNNING, COMPLETED, ...), or GONE if SLURM forgot it."""
        return self.job_record(job_id).get("JobState", "GONE")

    def wait(self, job_id: str, timeout_s: float) -> str:
        """Block until the job ends (a requeue is not an end); cancel it after timeout_s."""
        deadline = time.monotonic() + timeout_s
        state = self.job_state(job_id)
        while state not in TERMINAL_STATES and state != "GONE":
            if time.monotonic() > deadline:
                subprocess.run(["scancel", job_id], timeout=30, check=False)
                raise JobTimeoutError(f"SLURM job {job_id} still {state} after {timeout_s:.0f} s")
            time.sleep(1)
            state = self.job_state(job_id)
        return state

    def result(self, job: submitit.Job, timeout_s: float):
        """A one-task job's return value; raises submitit's error (with its stderr) if it failed."""
        self.wait(job.job_id, timeout_s)
        return job.result()

    def results(self, job: submitit.Job, timeout_s: float) -> list:
        """Every task's return value, in task order, for a multi-task job."""
        self.wait(job.job_id, timeout_s)
        return job.results()

    def executor(
        self, folder: Path, max_num_timeout: int = 0, **parameters
    ) -> submitit.AutoExecutor:
        """A submitit executor on this cluster's partition, logging under folder.

        max_num_timeout bounds the requeues after a time limit; parameters go to
        update_parameters (timeout_min defaults to 5).
        """
        executor = submitit.AutoExecutor(
            folder=folder / "%j", cluster="slurm", slurm_max_num_timeout=max_num_timeout
        )
        executor.update_parameters(slurm_partition=self.partition, timeout_min=5)
        executor.update_parameters(**parameters)
        return executor


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """The local cluster, or a skip saying how to start it."""
    local_conf = CLUSTER_DIR / "slurm.conf"
    with pytest.MonkeyPatch.context() as patch:
        if local_conf.is_file() and "SLURM_CONF" not in os.environ:
            # sinfo retries a dead controller for about 10 s; up.sh's pid record answers at once.
            if not (CLUSTER_DIR / "run" / "started.pids").is_file():
                pytest.skip(f"the local SLURM cluster in {CLUSTER_DIR} is down: run make slurm-up")
            patch.setenv("SLURM_CONF", str(local_conf))
        yield _running_cluster()


def _running_cluster() -> SlurmCluster:
    """The partition and nodes sinfo reports, or a skip if it does not answer."""
    try:
        listing = subprocess.run(
            ["sinfo", "--noheader", "--Node", "--format=%N %P"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except subprocess.CalledProcessError as error:
        pytest.skip(f"sinfo failed ({error.stderr.strip()}): run make slurm-up")
    except (OSError, subprocess.TimeoutExpired) as error:
        pytest.skip(f"no SLURM cluster answers sinfo ({error}): run make slurm-up")
    node_partitions = [line.split() for line in listing.splitlines() if line.strip()]
    default_partitions = {partition for _, partition in node_partitions if partition.endswith("*")}
    if not default_partitions:
        pytest.skip(f"sinfo lists no default partition ({listing!r}): run make slurm-up")
    nodes = tuple(sorted({node for node, _ in node_partitions}))
    return SlurmCluster(partition=default_partitions.pop().rstrip("*"), nodes=nodes)


@pytest.fixture
def submitit_folder(tmp_path: Path) -> Path:
    """A fresh submitit log folder: job ids restart at 1 on a new cluster, so never share one."""
    folder = tmp_path / "submitit"
    folder.mkdir()
    return folder
