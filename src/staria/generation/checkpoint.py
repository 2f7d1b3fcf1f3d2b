"""Open any checkpoint `staria-train` wrote, with the network it was trained with.

Tasks keep their network out of the checkpoint's hyperparameters, so the network config comes
from the run's resolved `config.yaml` (written by `staria-train` beside `checkpoints/`); the
task class named there loads the weights through its own `load_from_checkpoint`. The data
settings (snippet length, style key, cache) come from the same file. A Lightning checkpoint
holds pickled config objects and RNG states, so it is unpickled in full: open only checkpoints
of runs you trust (your own).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from staria.training.tasks.base import TrainingTask

RUN_CONFIG = "config.yaml"


class CheckpointError(ValueError):
    """A checkpoint that cannot be opened as a Staria run; names the file at fault."""


@dataclass(frozen=True)
class LoadedCheckpoint:
    """A task in eval mode plus the settings of the run that trained it."""

    path: Path
    run_dir: Path
    task: TrainingTask
    run_config: DictConfig
    data_settings: DictConfig

    @property
    def net(self) -> torch.nn.Module:
        return self.task.net


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run folder of `runs/<name>/stage-<X>/checkpoints/<file>.ckpt`: the first folder above
    the checkpoint that holds the resolved `config.yaml`."""
    checkpoint = Path(checkpoint).resolve()
    for folder in checkpoint.parents:
        if (folder / RUN_CONFIG).is_file():
            return folder
    raise CheckpointError(
        f"{checkpoint}: no {RUN_CONFIG} in any folder above it; pass run_config=<the run's "
        "resolved config.yaml>"
    )


def load_checkpoint(
    checkpoint: str | Path,
    device: torch.device | str = "cpu",
    run_config: str | Path | None = None,
) -> LoadedCheckpoint:
    """Build the run's network from its config and load the checkpoint into its task class."""
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise CheckpointError(f"checkpoint {checkpoint} does not exist")
    config_path = Path(run_config) if run_config else run_dir_of(checkpoint) / RUN_CONFIG
    config = OmegaConf.load(config_path)
    model = config.get("model")
    if model is None or "_target_" not in model or "net" not in model:
        raise CheckpointError(f"{config_path}: key 'model' lacks a task `_target_` and its `net`")
    task_class = hydra.utils.get_class(model._target_)
    if not issubclass(task_class, TrainingTask):
        raise CheckpointError(f"{config_path}: model._target_={model._target_} is not a task")
    net = hydra.utils.instantiate(model.net)
    try:
        task = task_class.load_from_checkpoint(
            checkpoint, map_location=device, weights_only=False, net=net
        )
    except RuntimeError as error:
        raise CheckpointError(
            f"{checkpoint}: does not fit the net of {config_path}: {error}"
        ) from error
    task.eval()
    return LoadedCheckpoint(checkpoint, config_path.parent, task, config, config.data)
