"""The one way tests compose Staria's real configs: `conf/` through Hydra's compose API, the
training config shrunk to what two CPU cores run in seconds, and the networks built from the
`conf/model/net/*_tiny.yaml` a run composes. Every test that needs a training config goes
through `compose_config` and the one shrink, `SHRINK` (`compose_train` applies it; a test that
runs `staria-train` as a process passes it on the command line); one that needs a network goes
through `tiny_net`. A test adds to `SHRINK` only what it needs beyond it (`steps(1)`, longer
sequences), later overrides winning."""

from __future__ import annotations

from functools import cache
from pathlib import Path

import hydra
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from staria.paths import REPO_ROOT
from staria.training.config import compose_net, register_configs

CONF_DIR = REPO_ROOT / "conf"

# The one shrink: what every composed training config gets before its own overrides: no config
# printout, no logger, sequences of 128 tokens.
SHRINK = ("print_config=false", "logger=none", "data.max_seq_len=128")

# The trunk every tiny network of the tests has unless a test asks for another: 2 layers of
# 2 heads x 16 = 32 wide (half the `*_tiny.yaml` width).
TINY_TRUNK = {"dim": 32, "depth": 2, "heads": 2, "dim_head": 16}


def shrink(*overrides: str) -> tuple[str, ...]:
    """`SHRINK` with `overrides` in place of its own settings of the same keys and the others
    added: a command line that sets each key once, as Hydra lists a run's overrides (the
    command that resumes it)."""
    keys = {override.split("=", 1)[0] for override in overrides}
    return (*(o for o in SHRINK if o.split("=", 1)[0] not in keys), *overrides)


def steps(count: int) -> tuple[str, ...]:
    """Overrides for a run of `count` optimizer steps that validates and writes `last.ckpt`
    at its last step."""
    return (
        f"trainer.max_steps={count}",
        f"trainer.val_check_interval={count}",
        f"callbacks.checkpointing.last_every_n_steps={count}",
    )


def compose_config(name: str, *overrides: str, hydra_node: bool = False) -> DictConfig:
    """`conf/<name>.yaml` (train, generate) with `overrides`, unshrunk; with `hydra_node`, the
    `hydra` node kept and set as Hydra's runtime config (what a resolver or launcher sees)."""
    register_configs()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(name, overrides=list(overrides), return_hydra_config=hydra_node)
    if hydra_node:
        HydraConfig.instance().set_config(cfg)
    return cfg


def compose_train(run_dir: Path | None, *overrides: str) -> DictConfig:
    """`train.yaml` shrunk (`SHRINK`, then `overrides`) as a run's task function sees it:
    Hydra's runtime config set, the `hydra` node removed; `run_dir` is the run folder."""
    paths = [f"paths.run_dir={run_dir}"] if run_dir is not None else []
    cfg = compose_config("train", *SHRINK, *paths, *overrides, hydra_node=True)
    with open_dict(cfg):
        del cfg.hydra
    return cfg


@cache
def _composed_net(name: str) -> dict:
    register_configs()
    return OmegaConf.to_container(compose_net(name), resolve=True)


def _trunks(node: DictConfig) -> list[DictConfig]:
    """The nodes of a network config that build an x-transformers trunk (`depth` layers)."""
    found = [node] if "_target_" in node and "depth" in node else []
    for key in node:
        child = node._get_node(key)
        if isinstance(child, DictConfig):
            found += _trunks(child)
    return found


def tiny_net(
    name: str = "staria_tiny",
    vocab: int | None = None,
    seed: int | None = 0,
    trunk: dict | None = None,
    **settings,
) -> torch.nn.Module:
    """`conf/model/net/<name>.yaml` as a run composes it (`compose_net`), built after
    `torch.manual_seed(seed)` (none with `seed=None`): every trunk in it (a Staria net's encoder
    and decoder) `TINY_TRUNK | trunk` wide and `vocab` ids (default: the tokenizer's), a
    decoder's context as wide as its encoder, then `settings` merged in: nested dicts for the
    parts (`decoder={"adapter_dim": 4}`), plain values for the net's own keys."""
    cfg = OmegaConf.create(_composed_net(name))  # a copy of its own
    shape = TINY_TRUNK | (trunk or {})
    for node in _trunks(cfg):
        node.merge_with(shape)
        if vocab is not None:
            node.num_tokens = vocab
        if "context_dim" in node:
            node.context_dim = shape["dim"]
    cfg.merge_with(settings)
    if seed is not None:
        torch.manual_seed(seed)
    return hydra.utils.instantiate(cfg)
