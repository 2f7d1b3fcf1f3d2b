"""Typed schema of `conf/generate.yaml`: a typo or wrong type in an override fails at once."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


@dataclass
class SamplingConfig:
    """Filters and length (`sampling`); `staria.generation.sampling.SamplingSettings` checks
    their ranges."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    min_p: float | None = None
    max_length: int = 1024


@dataclass
class PromptConfig:
    """Where snippets come from (`data`, `midi` or `scratch`), how a MIDI file's sections are
    found, the form asked for and the decoder start (`generation/prompts.py`)."""

    source: str = "data"
    midi: list[str] = field(default_factory=list)
    # [[start_s, end_s], ...]; numbers checked by prompts.labels_from_windows (OmegaConf cannot
    # type a nested list of floats that accepts ints)
    windows: list[Any] | None = None
    labeller: str | None = None
    split_dir: str | None = None
    split: str = "val"
    pieces: list[int] | None = None
    form: str | None = None
    # One target form per conditioning piece, in order (beside prompt.pieces or prompt.midi).
    forms: list[str] | None = None
    structure: str = "auto"
    continue_s: float = 0.0
    style_key: str | None = None


@dataclass
class GenerateConfig:
    checkpoint: str = MISSING
    run_config: str | None = None
    out_dir: str | None = None
    name: str | None = None
    num_samples: int = 4
    batch_size: int = 4
    seed: int = 0
    device: str = "auto"
    cache_kv: bool = True
    allow_pickle_runs_code: bool = False
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    prompt: PromptConfig = field(default_factory=PromptConfig)


def register_configs() -> None:
    ConfigStore.instance().store(name="generate_schema", node=GenerateConfig)
