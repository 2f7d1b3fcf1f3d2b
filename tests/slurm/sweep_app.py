"""A tiny Hydra app for the sweep test: each task records where SLURM ran it."""

import json
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(config_path="sweep_app_conf", config_name="config", version_base="1.3")
def main(config: DictConfig) -> int:
    """Write this task's SLURM placement into the run folder and return twice the value."""
    placement = {
        "value": config.value,
        "array_job_id": os.environ.get("SLURM_ARRAY_JOB_ID"),
        "array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "node": os.environ.get("SLURMD_NODENAME"),
        "rank": int(os.environ["SLURM_PROCID"]),
    }
    output_dir = Path(HydraConfig.get().runtime.output_dir)
    (output_dir / f"placement.rank{placement['rank']}.json").write_text(json.dumps(placement))
    return 2 * config.value


if __name__ == "__main__":
    main()
