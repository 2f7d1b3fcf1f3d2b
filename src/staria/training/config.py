"""Typed schemas for the config groups training owns, registered with Hydra's ConfigStore.

A typo in an override of these keys, or a value of the wrong type, fails at composition and
names the key; `missing_keys` turns any `???` left in the config into one clear error.
"""

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError


@dataclass
class StageConfig:
    """Which parameters train when (stages.py): A adapters, B progressive unfreezing, C all."""

    name: str = "none"
    unfreeze_top_k: int = 1
    unfreeze_every_n_steps: int = 100
    lr_scale: dict[str, float] = field(default_factory=dict)
    # A and B: also train the embedding and head rows of Staria's added tokens (stages.py).
    train_new_token_rows: bool = True


@dataclass
class PathsConfig:
    """Folders of one run; `run_dir` is where resume looks, so it must be deterministic."""

    root_dir: str = MISSING
    data_dir: str = MISSING
    runs_dir: str = MISSING
    run_dir: str = MISSING
    checkpoint_dir: str = MISSING


@dataclass
class TrainConfig:
    """Run settings at the top of `train.yaml`; each group below is typed by its own schema."""

    name: str = MISSING
    seed: int = 0
    train: bool = True
    test: bool = False
    init_from: str | None = None
    run_id: str | None = None
    print_config: bool = True
    model: Any = MISSING
    data: Any = MISSING
    stage: StageConfig = MISSING
    trainer: Any = MISSING
    callbacks: Any = None
    logger: Any = None
    paths: PathsConfig = MISSING


class MissingConfigValueError(ValueError):
    """A required config value (`???`) was never given."""


def register_configs() -> None:
    """Make the schemas available as `train_schema`, `stage/schema` and `paths/schema`."""
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(group="stage", name="schema", node=StageConfig)
    store.store(group="paths", name="schema", node=PathsConfig)


def check_no_missing(cfg: DictConfig) -> None:
    """Fail before any work with every `???` key named, not at the first access deep in a run."""
    try:
        missing = sorted(OmegaConf.missing_keys(cfg))
    except InterpolationToMissingValueError as error:
        # A `???` key that another key interpolates surfaces while resolving that other key.
        raise MissingConfigValueError(f"{error.full_key} needs a value: {error.msg}") from None
    if missing:
        raise MissingConfigValueError(
            "required config value(s) not set: "
            + ", ".join(missing)
            + " (give them on the command line, e.g. `"
            + missing[0]
            + "=...`)"
        )
