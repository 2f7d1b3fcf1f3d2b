"""Index MIDI beyond one node: each shard one task of a SLURM job array, then one merge job.

The jobs take their settings (partition, account, time limit, setup lines, ...) from the
`cluster/slurm` config that training's sweeps use, through the same submitit machinery; a
shard is one task on one node and tokenizes its chunks with all of the node's cores.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import submitit
from hydra import compose, initialize_config_dir
from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
from omegaconf import OmegaConf

from staria.data.preprocess import IndexSettings, build_index, merge_index
from staria.paths import REPO_ROOT

# Launcher keys that describe a training job's shape or Hydra's folders, not an indexing job's.
TRAINING_ONLY_KEYS = ("_target_", "submitit_folder", "nodes", "tasks_per_node", "gpus_per_node")


@dataclass
class IndexJobs:
    """The submitted shard array and the merge job that runs once every shard succeeded."""

    shards: list[submitit.Job]
    merge: submitit.Job

    @property
    def array_job_id(self) -> str:
        return self.shards[0].job_id.split("_")[0]


def cluster_launcher_settings(overrides: Sequence[str] = ()) -> dict:
    """`hydra.launcher` of `cluster=slurm`, with `hydra.launcher.*=...` overrides applied."""
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        config = compose(
            overrides=[
                "+cluster=slurm",
                "+trainer.num_nodes=1",
                "+trainer.devices=1",
                "hydra.job.name=staria-index",
                *overrides,
            ],
            return_hydra_config=True,
        )
    return OmegaConf.to_container(config.hydra.launcher, resolve=True)


def index_executor(folder: str | Path, launcher: dict) -> submitit.AutoExecutor:
    """A submitit executor for one-task jobs with the launcher's queue settings."""
    settings = {k: v for k, v in launcher.items() if k not in TRAINING_ONLY_KEYS}
    executor = submitit.AutoExecutor(
        folder=Path(folder) / "%j",
        cluster="slurm",
        slurm_max_num_timeout=settings.pop("max_num_timeout"),
    )
    generic_keys = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(
        nodes=1,
        tasks_per_node=1,
        **{k if k in generic_keys else f"slurm_{k}": v for k, v in settings.items()},
    )
    return executor


def submit_index(
    sources: Sequence[str | Path],
    cache_root: str | Path,
    settings: IndexSettings,
    num_shards: int,
    folder: str | Path,
    launcher: dict,
    workers: int | None = None,
    chunk_size: int = 64,
) -> IndexJobs:
    """Submit `build_index` shards as one array and `merge_index` to run after all of them.

    A failed shard cancels the merge (`kill-on-invalid-dep`); submitting again redoes only the
    unfinished chunks (finished ones are kept) and reuses a complete cache.
    """
    sources = [Path(source).resolve() for source in sources]
    cache_root = Path(cache_root).resolve()
    executor = index_executor(folder, launcher)
    with executor.batch():
        shards = [
            executor.submit(
                build_index, sources, cache_root, settings, workers, chunk_size, shard, num_shards
            )
            for shard in range(num_shards)
        ]
    extra = dict(launcher.get("additional_parameters") or {})
    executor.update_parameters(
        slurm_additional_parameters={
            **extra,
            "dependency": f"afterok:{shards[0].job_id.split('_')[0]}",
            "kill_on_invalid_dep": "yes",
        }
    )
    return IndexJobs(shards, executor.submit(merge_index, sources, cache_root, settings))
