"""The real `conf/` composed and shrunk for the training tests, and the preemption they simulate."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import hydra
import lightning.pytorch as pl
from omegaconf import DictConfig, open_dict

from staria.data import MidiDataModule
from staria.paths import REPO_ROOT
from tests.harness import compose_config, compose_train


def run_staria_train(
    cwd: Path, *args: str, timeout_s: float = 300, **env: str
) -> subprocess.CompletedProcess:
    """`staria-train ARGS` as a real process in `cwd` (one torch thread; the test helpers such
    as `tests.training.runs.SignalAtStep` importable); `env` adds variables."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO_ROOT), **env}
    command = [sys.executable, "-m", "staria.training.cli", *args]
    return subprocess.run(
        command, cwd=cwd, env=environment, capture_output=True, text=True, timeout=timeout_s
    )


def smoke(run_dir: Path, *overrides: str) -> DictConfig:
    """The smoke preset, shrunk, with `run_dir` as its run folder."""
    return compose_train(run_dir, "experiment=smoke", *overrides)


def synthetic_datamodule(cache_dir: Path, **overrides) -> MidiDataModule:
    """The composed config's synthetic data group (Staria's generative batches, as the default
    model decides) with `overrides` as arguments (nested `synthesis` keys too)."""
    data_config = compose_config("train", "data=synthetic").data
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
