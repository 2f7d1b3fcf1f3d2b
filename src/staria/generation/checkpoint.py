"""Open any checkpoint `staria-train` wrote, with the network it was trained with.

Tasks keep their network out of the checkpoint's hyperparameters, so the network config comes
from the run's resolved `config.yaml` (written by `staria-train` beside `checkpoints/`); the
task class named there loads the weights through its own `load_from_checkpoint`. The data
settings (snippet length, style key, cache) come from the same file.

A run folder may come from someone else, so nothing in it runs code: the checkpoint loads as
data (`staria.training.safe_loading`), and every `_target_` of the config is checked against
the project's own classes (`check_run_config`) before anything is imported or built.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from staria.models.xtransformers import compact_ids_in, use_compact_vocabulary
from staria.tokenizer import UNKNOWN_ID
from staria.training import safe_loading, tasks
from staria.training.checkpointing import CheckpointHistory, recorded_run
from staria.training.resume import RESOLVED_CONFIG
from staria.training.tasks.base import TrainingTask

RUN_CONFIG = RESOLVED_CONFIG  # the resolved config.yaml staria-train writes in a run folder
NET_TARGET_PREFIX = "staria.models."  # the networks: staria.models.StariaModel, ...
DATA_TARGETS = ("staria.data.MidiDataModule", "staria.data.datamodule.MidiDataModule")
TASK_TARGETS = frozenset(
    path
    for name, cls in inspect.getmembers(tasks, inspect.isclass)
    if issubclass(cls, TrainingTask)
    for path in (f"{tasks.__name__}.{name}", f"{cls.__module__}.{cls.__qualname__}")
)


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

    @property
    def structure(self) -> str:
        """How its training pieces were laid out, `labelled` (form and section tokens) or
        `plain`: as the checkpoint records it, else by its data (synthetic: labelled)."""
        recorded = self.task.trained_structure
        if recorded is not None:
            return recorded
        return "labelled" if self.data_settings.get("mode") == "synthetic" else "plain"


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


def _is_project_network(target: object) -> bool:
    """Whether `target` names a class or function defined in `staria.models` (a path through a
    module's imports, such as `staria.models.decoder.torch.load`, names something else)."""
    if not isinstance(target, str) or not target.startswith(NET_TARGET_PREFIX):
        return False
    try:  # importing staria.models' own modules runs only the project's code
        obj = hydra.utils.get_object(target)
    except Exception:
        return False
    return (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__.startswith(
        NET_TARGET_PREFIX
    )


def _leaves(node: object, key: str) -> Iterator[tuple[str, object]]:
    """(full key, value) of every leaf of a plain container."""
    if isinstance(node, dict):
        for child, value in node.items():
            yield from _leaves(value, f"{key}.{child}" if key else str(child))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _leaves(value, f"{key}[{index}]")
    else:
        yield key, node


def check_run_config(config: dict, config_path: Path) -> None:
    """Refuse a resolved run config (plain containers) that holds an interpolation or a
    `_target_` other than the project's own task, network and data classes, before anything
    named there is imported or built (`CheckpointError`)."""
    model = config.get("model")
    if not isinstance(model, dict) or "_target_" not in model or "net" not in model:
        raise CheckpointError(f"{config_path}: key 'model' lacks a task `_target_` and its `net`")
    for key, value in _leaves(config, ""):
        # An escaped `\${...}` resolves to text that building would read as an interpolation
        # again (`${oc.create:{_target_: ...}}`): a resolved run config holds none.
        if isinstance(value, str) and "${" in value:
            raise CheckpointError(f"{config_path}: {key}={value!r} holds an interpolation")
        if not key.endswith("_target_"):
            continue
        if key == "model._target_":
            allowed = value in TASK_TARGETS
        elif key.startswith("model.net."):
            allowed = _is_project_network(value)
        elif key == "data._target_":
            allowed = value in DATA_TARGETS
        else:
            allowed = not key.startswith(("model.", "data."))  # never built from a run folder
        if not allowed:
            raise CheckpointError(
                f"{config_path}: {key}={value!r} is not one of Staria's own classes; "
                "a run folder's config may only name Staria's tasks, networks and data module"
            )


def read_run_config(config_path: str | Path) -> DictConfig:
    """A run's `config.yaml` with every interpolation resolved (so what is checked is what is
    built), checked by `check_run_config`."""
    config_path = Path(config_path)
    try:
        resolved = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
    except Exception as error:
        raise CheckpointError(f"{config_path}: not a readable run config ({error})") from error
    if not isinstance(resolved, dict):
        raise CheckpointError(f"{config_path}: not a run config (a mapping of settings)")
    check_run_config(resolved, config_path)
    return OmegaConf.create(resolved)


def load_checkpoint(
    checkpoint: str | Path,
    device: torch.device | str = "cpu",
    run_config: str | Path | None = None,
    allow_pickle_runs_code: bool = False,
) -> LoadedCheckpoint:
    """Build the run's network from its config and load the checkpoint into its task class.

    The checkpoint loads as data only unless `allow_pickle_runs_code` (`safe_loading`).
    """
    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise CheckpointError(f"checkpoint {checkpoint} does not exist")
    config_path = Path(run_config) if run_config else run_dir_of(checkpoint) / RUN_CONFIG
    config = read_run_config(config_path)
    task_class = hydra.utils.get_class(config.model._target_)
    net = hydra.utils.instantiate(config.model.net)
    if config.model.get("vocabulary") == "compact":  # the rows it kept, before its weights
        state = safe_loading.load(checkpoint, allow_pickle_runs_code, map_location="cpu")
        full_ids = compact_ids_in(state.get("state_dict", {}))
        if full_ids is None:
            raise CheckpointError(f"{checkpoint}: a compact-vocabulary run without its ids")
        use_compact_vocabulary(net, full_ids, UNKNOWN_ID)
    try:
        with safe_loading.safe_globals():
            task = task_class.load_from_checkpoint(
                checkpoint,
                map_location=device,
                weights_only=not allow_pickle_runs_code,
                net=net,
            )
    except safe_loading.pickle.UnpicklingError as error:
        raise safe_loading.unsafe_file_error(checkpoint, error) from None
    except RuntimeError as error:
        raise CheckpointError(
            f"{checkpoint}: does not fit the net of {config_path}: {error}"
        ) from error
    task.eval()
    return LoadedCheckpoint(checkpoint, config_path.parent, task, config, config.data)


def training_provenance(loaded: LoadedCheckpoint) -> dict:
    """Where a checkpoint stands in its run: the model class, its optimizer step, and the
    validation loss of the latest validation at or before that step (with the step it was
    measured at), from the run's checkpoint record and history; None where unknown."""
    record = recorded_run(loaded.path) or {}
    step = record.get("step")
    measured = [
        event
        for event in CheckpointHistory(loaded.path.parent).events()
        if isinstance(event.get("value"), int | float)
        and isinstance(event.get("step"), int)
        and (step is None or event["step"] <= step)
    ]
    latest = max(measured, key=lambda event: event["step"], default=None)
    return {
        "run_dir": str(loaded.run_dir),
        "model": type(loaded.net).__name__,
        "step": step,
        "val_loss": latest["value"] if latest else None,
        "val_loss_step": latest["step"] if latest else None,
    }
