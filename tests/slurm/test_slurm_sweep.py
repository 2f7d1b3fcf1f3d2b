"""A Hydra multirun through hydra-submitit-launcher with the repo's cluster=slurm config."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slurm

SWEEP_APP = Path(__file__).with_name("sweep_app.py")
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"


def test_multirun_submits_each_sweep_point_as_an_array_task(slurm_cluster, tmp_path):
    sweep_dir = tmp_path / "multirun"
    command = [
        sys.executable,
        str(SWEEP_APP),
        "--multirun",
        f"hydra.searchpath=[file://{CONF_DIR}]",
        "cluster=slurm",
        f"hydra.sweep.dir={sweep_dir}",
        f"hydra.launcher.partition={slurm_cluster.partition}",
        "hydra.launcher.timeout_min=5",
        "trainer.num_nodes=2",
        "value=3,4",
    ]
    try:
        # The launcher blocks until every job has a result; without sacct it would wait forever
        # on a job that died, hence the timeout.
        sweep = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    except subprocess.TimeoutExpired:
        subprocess.run(["scancel", "--name=sweep_app"], timeout=30, check=False)
        raise
    assert sweep.returncode == 0, sweep.stderr[-4000:]

    placements = {
        job_num: [
            json.loads((sweep_dir / str(job_num) / f"placement.rank{rank}.json").read_text())
            for rank in (0, 1)
        ]
        for job_num in (0, 1)
    }
    assert [ranks[0]["value"] for ranks in placements.values()] == [3, 4]
    assert {placement["array_job_id"] for ranks in placements.values() for placement in ranks} == {
        placements[0][0]["array_job_id"]
    }
    assert [ranks[0]["array_task_id"] for ranks in placements.values()] == ["0", "1"]
    # trainer.num_nodes=2 reached sbatch through cluster/slurm.yaml: one rank on each node.
    for ranks in placements.values():
        assert sorted(placement["node"] for placement in ranks) == sorted(slurm_cluster.nodes)
        assert [placement["value"] for placement in ranks] == [ranks[0]["value"]] * 2
