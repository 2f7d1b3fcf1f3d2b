"""The one way tests compose Staria's real configs: `conf/` through Hydra's compose API, the
training config shrunk to what two CPU cores run in seconds. Every test that needs a config
goes through `compose_config` (or the `compose_train` fixture in conftest.py)."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from staria.paths import REPO_ROOT
from staria.training.config import register_configs

CONF_DIR = REPO_ROOT / "conf"

# What every composed training config gets before its own overrides: no config printout, no
# logger, sequences of 128 tokens.
SHRINK = ("print_config=false", "logger=none", "data.max_seq_len=128")


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
