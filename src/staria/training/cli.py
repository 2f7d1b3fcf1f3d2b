"""`staria-train`: Hydra composes `conf/train.yaml` with the command's overrides, then
`training.train.run` trains. Only Hydra and the config schemas load before that, so
`--help`, `--cfg job` and a refused override answer without importing torch or Lightning.
"""

import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

import staria.training.config  # noqa: F401  (registers the schemas and resolvers)
from staria.paths import REPO_ROOT

# Absolute, so the installed console script finds it from any working directory.
CONFIG_DIR = str(REPO_ROOT / "conf")


class HydraConfigForLaunchers(Callback):
    """Make `${hydra:...}` resolvable while a multirun launches its jobs (hydra#1786).

    Hydra sets its runtime config per job, but a launcher resolves `hydra.sweep.dir` and its
    own keys before any job starts; the run-folder layout (`runs/<name>/stage-<stage>-<sig>`)
    goes through `${hydra:...}` in `name` and `paths`, which the task needs too. A job sets
    its own.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        HydraConfig.instance().set_config(config)


class RunsTableAfterSweep(Callback):
    """At the end of a multirun, the `staria-runs` table of every run of its name (the sweep
    folder `runs/<name>`): status, step, best validation loss and the settings that differ."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from staria.training.runs_table import find_runs, format_table, read_run

        sweep_dir = Path(config.hydra.sweep.dir)
        runs = find_runs([sweep_dir]) if sweep_dir.is_dir() else []
        if runs:
            print(format_table([read_run(run) for run in runs], sweep_dir.resolve()))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> None:
    from staria.console import quiet_known_noise
    from staria.training.train import run

    quiet_known_noise()
    status = run(cfg)
    if status:
        sys.exit(status)


if __name__ == "__main__":
    main()
