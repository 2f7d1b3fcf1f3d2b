"""Typed schemas for the config groups training owns, registered with Hydra's ConfigStore.

A typo in an override of these keys, or a value of the wrong type, fails at composition and
names the key; `missing_keys` turns any `???` left in the config into one clear error. The
other groups configure objects (`_target_` nodes): `check_target_arguments` checks each
node's keys and value types against the signature of what it builds, before anything is.
"""

import collections.abc
import inspect
import os
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationToMissingValueError

from staria.paths import REPO_ROOT, midi_dir
from staria.training.run_identity import run_signature_resolver


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
class ResumeConfig:
    """What a rerun of a run folder with progress may do (train.py, docs/training.md)."""

    apply_changes: bool = False
    start_over: bool = False


@dataclass
class TrainConfig:
    """Run settings at the top of `train.yaml`; each group below is typed by its own schema."""

    name: str = MISSING
    seed: int = 0
    train: bool = True
    test: bool = False
    init_from: str | None = None
    init_encoder_from: str | None = None
    init_decoder_from: str | None = None
    # Unpickle checkpoints and weight files in full, which can run code in them (safe_loading).
    allow_pickle_runs_code: bool = False
    resume: ResumeConfig = field(default_factory=ResumeConfig)
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


def data_for_model(task_target: str, what: str) -> str:
    """The data a training task reads, from its class: `what` is `task` (`data_task`:
    generative, contrastive, classification) or `layout` (`data_layout`: staria, baseline).
    The `data_for_model` resolver of `conf/data`: the model group decides the data layout."""
    if what not in ("task", "layout"):
        raise ValueError(f"data_for_model: {what!r} is not 'task' or 'layout'")
    task_class = hydra.utils.get_class(task_target)
    return getattr(task_class, f"data_{what}")


def check_consistent(cfg: DictConfig) -> None:
    """Settings of different groups that must agree, refused with the keys named: the data
    task and layout the model reads (explicit `data.task`/`data.model_kind` overrides),
    snippet rows within what the snippet encoder reads, and part weights
    (`init_encoder_from`, `init_decoder_from`) only for a model with those parts."""
    target = OmegaConf.select(cfg, "model._target_")
    if target is None or OmegaConf.select(cfg, "data") is None:
        return
    wrong = []
    for key, what in (("task", "task"), ("model_kind", "layout")):
        needed, given = data_for_model(target, what), OmegaConf.select(cfg, f"data.{key}")
        if given != needed:
            wrong.append(
                f"data.{key}={given} (model `{target}` reads {needed!r}: drop the data override, "
                "the model group sets the data layout)"
            )
    encoder_len = OmegaConf.select(cfg, "model.net.encoder.max_seq_len")
    if encoder_len is None and target.endswith("ContrastiveTask"):
        encoder_len = OmegaConf.select(cfg, "model.net.max_seq_len")
    parts = [key for key in ("init_encoder_from", "init_decoder_from") if cfg.get(key)]
    if parts and not target.endswith("StariaTask"):
        wrong.append(f"{parts[0]}={cfg[parts[0]]} (only model=staria has an encoder and decoder)")
    for key in ("init_from", *parts):
        if cfg.get(key) and not os.path.isfile(cfg[key]):
            wrong.append(f"{key}={cfg[key]} (no such file)")
    aria = OmegaConf.select(cfg, "model.net.aria_weights")
    if aria and OmegaConf.select(cfg, "model.vocabulary") == "compact":
        wrong.append(f"model.vocabulary=compact (Aria weights {aria} need every id's rows)")
    snippet_len = OmegaConf.select(cfg, "data.snippet_len")
    if encoder_len is not None and snippet_len is not None and snippet_len + 1 > encoder_len:
        wrong.append(
            f"data.snippet_len={snippet_len} (a snippet row is {snippet_len + 1} tokens; the "
            f"encoder reads at most model.net...max_seq_len={encoder_len})"
        )
    if wrong:
        raise ConfigValueError("settings that must agree do not: " + "; ".join(wrong))


def register_configs() -> None:
    """Make the schemas available as `train_schema`, `stage/schema` and `paths/schema`, and
    the `data_for_model`, `midi_dir` and `run_signature` resolvers."""
    if not OmegaConf.has_resolver("data_for_model"):
        OmegaConf.register_new_resolver("data_for_model", data_for_model)
    if not OmegaConf.has_resolver("midi_dir"):  # STARIA_MIDI_DIR, else the repo's ../shared/midi
        OmegaConf.register_new_resolver("midi_dir", lambda: str(midi_dir()))
    if not OmegaConf.has_resolver("run_signature"):  # the run folder's settings signature
        OmegaConf.register_new_resolver("run_signature", run_signature_resolver)
    store = ConfigStore.instance()
    store.store(name="train_schema", node=TrainConfig)
    store.store(group="stage", name="schema", node=StageConfig)
    store.store(group="paths", name="schema", node=PathsConfig)


def compose_net(name: str, *overrides: str) -> DictConfig:
    """`conf/model/net/<name>.yaml` as `staria-train model/net=<name>` composes it (the nets it
    builds on merged in), with `overrides` relative to it (`"dim=32"`); for code that builds a
    network outside a run (benchmarks, tests). Raises Hydra's error naming an unknown net."""
    with hydra.initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = hydra.compose(
            "train", [f"model/net={name}", *(f"model.net.{item}" for item in overrides)]
        )
    return cfg.model.net


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


class ConfigValueError(ValueError):
    """A config key the object it configures does not take, or a value it cannot use; the
    message names the key and the value."""


_HYDRA_KEYS = ("_target_", "_partial_", "_recursive_", "_convert_", "_args_")


def _target_nodes(node: Any, key: str) -> Iterator[tuple[str, DictConfig]]:
    """(full key, node) of every config node with a `_target_`, parents before children."""
    if isinstance(node, DictConfig):
        if "_target_" in node:
            yield key, node
        for child in node:
            child_node = node._get_node(child)
            if isinstance(child_node, DictConfig | ListConfig):
                yield from _target_nodes(child_node, f"{key}.{child}" if key else str(child))
    elif isinstance(node, ListConfig):
        for index in range(len(node)):
            yield from _target_nodes(node._get_node(index), f"{key}[{index}]")


def _arguments(target: Any) -> tuple[dict[str, inspect.Parameter], dict[str, Any], bool]:
    """Named parameters of a callable (a class's `__init__` chain up to one without
    `**kwargs`), their type hints, and whether it also takes any other keyword."""
    functions = (
        [klass.__dict__["__init__"] for klass in target.__mro__ if "__init__" in klass.__dict__]
        if inspect.isclass(target)
        else [target]
    )
    parameters: dict[str, inspect.Parameter] = {}
    hints: dict[str, Any] = {}
    for function in functions:
        signature = inspect.signature(function)
        for name, parameter in signature.parameters.items():
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                parameters.setdefault(name, parameter)
        try:
            for name, hint in typing.get_type_hints(function).items():
                hints.setdefault(name, hint)
        except Exception:  # unresolvable annotations: those values go unchecked
            pass
        if not any(p.kind == p.VAR_KEYWORD for p in signature.parameters.values()):
            return parameters, hints, False
    return parameters, hints, True


def _fits(value: Any, hint: Any) -> bool:
    """Whether a config value can be passed where `hint` is annotated. Unknown classes pass
    (Hydra builds nested objects; this only catches plainly wrong scalars and keys)."""
    if hint is Any or hint is inspect.Parameter.empty:
        return True
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or isinstance(hint, types.UnionType):
        return any(_fits(value, arm) for arm in args)
    if origin is typing.Literal:
        return value in args
    if hint is type(None):
        return value is None
    if isinstance(value, DictConfig) and "_target_" in value:
        return True  # an object Hydra builds; its own node is checked on its own
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str or hint in (Path, os.PathLike):
        return isinstance(value, str)
    if typing.is_typeddict(hint):  # its fields: _check_fields
        return isinstance(value, DictConfig | dict)
    container = origin or hint
    if container in (list, tuple, set, frozenset) or container in (
        collections.abc.Sequence,
        collections.abc.Iterable,
    ):
        if not isinstance(value, ListConfig | list | tuple):
            return isinstance(value, str) and container is collections.abc.Iterable
        element = args[0] if args and container is not tuple else Any
        return all(_fits(item, element) for item in value)
    if container in (dict, collections.abc.Mapping):
        return isinstance(value, DictConfig | dict)
    if value is None or isinstance(value, bool | int | float | str):
        return not inspect.isclass(container) or isinstance(value, container)
    return True


def check_target_arguments(cfg: DictConfig) -> None:
    """Every `_target_` node's keys are arguments of what it names, with values of the
    annotated types: `ConfigValueError` naming `key=value` before anything is built."""
    for key, node in _target_nodes(cfg, ""):
        target_name = node._get_node("_target_")._value()
        try:
            target = hydra.utils.get_object(target_name)
        except Exception as error:
            raise ConfigValueError(
                f"{key}._target_={target_name!r} cannot be imported: {error}"
            ) from None
        parameters, hints, takes_any = _arguments(target)
        for name in node:
            if name in _HYDRA_KEYS:
                continue
            if name not in parameters:
                if takes_any:
                    continue
                choices = ", ".join(p for p in parameters if p != "self")
                raise ConfigValueError(
                    f"{_shown(node, name, f'{key}.{name}')}: {target_name} has no argument "
                    f"{name!r} (it takes: {choices})"
                )
            hint = hints.get(name, parameters[name].annotation)
            if typing.is_typeddict(hint) and isinstance(node[name], DictConfig):
                _check_fields(node[name], hint, f"{key}.{name}")
            elif not _fits(node[name], hint):
                shown = _shown(node, name, f"{key}.{name}")
                raise ConfigValueError(f"{shown}: {target_name} expects {_describe(hint)}")


def _check_fields(node: DictConfig, settings: type, key: str) -> None:
    """The keys of a settings dict (a TypedDict) against its fields and their types."""
    fields = typing.get_type_hints(settings)
    for name in node:
        if name not in fields:
            raise ConfigValueError(
                f"{_shown(node, name, f'{key}.{name}')}: not a field of {settings.__name__} "
                f"({', '.join(fields)})"
            )
        if not _fits(node[name], fields[name]):
            raise ConfigValueError(
                f"{_shown(node, name, f'{key}.{name}')}: {settings.__name__}.{name} expects "
                f"{_describe(fields[name])}"
            )


def _shown(node: DictConfig, name: str, key: str) -> str:
    """`key=value` as resolved, and where an interpolated value came from."""
    value = node[name]
    if isinstance(value, DictConfig | ListConfig):
        value = OmegaConf.to_container(value, resolve=True)
    raw = node._get_node(name)._value()
    source = f" (from {raw})" if isinstance(raw, str) and raw.startswith("${") else ""
    return f"{key}={value!r}{source}"


def _describe(hint: Any) -> str:
    """A type hint in words: `int`, `one of 'a', 'b'`, `int or None`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Union or isinstance(hint, types.UnionType):
        return " or ".join(dict.fromkeys(_describe(arm) for arm in args))
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(arg) for arg in args)
    if hint is type(None):
        return "None"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


register_configs()  # importing the schemas makes them (and the resolvers) available
