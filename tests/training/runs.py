"""The real `conf/` composed and shrunk for the training tests, and the preemption they simulate."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import hydra
import lightning.pytorch as pl
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf, open_dict

from staria.data import MidiDataModule
from staria.paths import REPO_ROOT

CONF_DIR = REPO_ROOT / "conf"
TESTS_DIR = REPO_ROOT / "tests"


def run_staria_train(
    cwd: Path, *args: str, timeout_s: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """`staria-train ARGS` as a real process in `cwd` (one torch thread; the test helpers such
    as `training.runs.SignalAtStep` importable); `env` adds variables."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(TESTS_DIR), **env}
    command = [sys.executable, "-m", "staria.training.cli", *args]
    return subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout_s
    )


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
    # what the model group decides in a composed config (data_for_model): Staria's layout
    data_config.merge_with({"task": "generative", "model_kind": "staria"})
    return hydra.utils.instantiate(data_config, cache_dir=str(cache_dir), **overrides)


def first_train_batch(datamodule: MidiDataModule) -> dict:
    """Prepare and set up `datamodule` for fit; its first training batch."""
    datamodule.prepare_data()
    datamodule.setup("fit")
    return next(iter(datamodule.train_dataloader()))


class SignalAtStep(pl.Callback):
    """Sends the process `signal_name` (default SIGUSR2, what submitit sends before a time
    limit) at the start of training micro-batch `batch` (counted over the run), or else of
    the first batch of optimizer step `step`."""

    def __init__(
        self, step: int | None = None, batch: int | None = None, signal_name: str = "SIGUSR2"
    ):
        self.step, self.batch, self.signal = step, batch, signal.Signals[signal_name]

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        total = trainer.fit_loop.epoch_loop.total_batch_idx
        due = total == self.batch if self.batch is not None else trainer.global_step == self.step
        if due:
            os.kill(os.getpid(), self.signal)
            self.step = self.batch = -1


def preempt_at_step(cfg: DictConfig, step: int, signal_name: str = "SIGUSR2") -> None:
    """Make the run `cfg` describes receive `signal_name` during step `step`."""
    add_callback(cfg, "signal", SignalAtStep, step=step, signal_name=signal_name)


def add_callback(cfg: DictConfig, name: str, kind: type, **kwargs) -> None:
    with open_dict(cfg):
        cfg.callbacks[name] = {"_target_": f"{kind.__module__}.{kind.__qualname__}", **kwargs}


class SimulatedKill(BaseException):
    """What SIGKILL leaves: the run stops where it is, and nothing of ours runs after."""


class KillAt(pl.Callback):
    """Raises `SimulatedKill` at `hook` (a callback hook name) when the run is at `step`."""

    def __init__(self, hook: str, step: int):
        self.hook, self.step = hook, step
        setattr(self, hook, self._maybe_kill)

    def _maybe_kill(self, trainer, *args, **kwargs):
        if trainer.global_step == self.step and not trainer.sanity_checking:
            raise SimulatedKill(f"{self.hook} at step {self.step}")


class SigtermAfterLightningsHandler(pl.Callback):
    """Sends SIGTERM right after Lightning installs its own SIGTERM handler, before training
    starts (the window where Lightning, not Staria, catches it)."""

    def setup(self, trainer, pl_module, stage):
        connector = trainer._signal_connector
        register = connector.register_signal_handlers

        def register_then_signal():
            register()
            os.kill(os.getpid(), signal.SIGTERM)

        connector.register_signal_handlers = register_then_signal
