"""The real `conf/` composed and shrunk for the training tests, and the preemption they simulate."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import hydra
import lightning.pytorch as pl
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from staria.data import MidiDataModule
from staria.paths import REPO_ROOT

CONF_DIR = REPO_ROOT / "conf"


def compose_train(run_dir: Path, *overrides: str, logger: str = "none") -> DictConfig:
    """`train.yaml` small enough for a CPU test, with `run_dir` as the run folder."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                f"paths.run_dir={run_dir}",
                "print_config=false",
                f"logger={logger}",
                "data.max_seq_len=128",
                *overrides,
            ],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra  # as in a real run: the task function never sees the `hydra` node
    return cfg


def smoke(run_dir: Path, *overrides: str, logger: str = "none") -> DictConfig:
    return compose_train(run_dir, "experiment=smoke", *overrides, logger=logger)


def synthetic_datamodule(cache_dir: Path, **overrides) -> MidiDataModule:
    """`conf/data/synthetic.yaml` with `overrides` merged in (nested `synthesis` keys too)."""
    data_config = OmegaConf.load(CONF_DIR / "data" / "synthetic.yaml")
    return hydra.utils.instantiate(data_config, cache_dir=str(cache_dir), **overrides)


class SignalAtStep(pl.Callback):
    """Sends the process SIGUSR2 (what submitit sends before a time limit) during step `step`."""

    def __init__(self, step: int):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGUSR2)


def preempt_at_step(cfg: DictConfig, step: int) -> None:
    """Make the run `cfg` describes receive SIGUSR2 during step `step`."""
    with open_dict(cfg):
        cfg.callbacks.signal = {"_target_": f"{__name__}.SignalAtStep", "step": step}
