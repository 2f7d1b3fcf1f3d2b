"""Callbacks the SLURM training tests add to a real run (importable on the nodes via PYTHONPATH).

`StepPace` holds each optimizer step to a minimum duration, so a run's length in seconds is
known and a 2-minute job is reliably signalled before it finishes; `ValidationPace` makes a
validation last a known time; `RankReport` writes what
each DDP rank ended with, so the test can check that all ranks agree.
"""

import json
import os
import time
from pathlib import Path

import lightning.pytorch as pl
import torch


class StepPace(pl.Callback):
    """Sleep out the rest of `step_s` after every training step."""

    def __init__(self, step_s: float):
        self.step_s = step_s
        self._started = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._started = time.monotonic()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        time.sleep(max(0.0, self.step_s - (time.monotonic() - self._started)))


class ValidationPace(pl.Callback):
    """Sleep `batch_s` after every validation batch: a validation whose length is known."""

    def __init__(self, batch_s: float):
        self.batch_s = batch_s

    def on_validation_batch_end(self, trainer, pl_module, *args, **kwargs) -> None:
        if not trainer.sanity_checking:
            time.sleep(self.batch_s)


class RankReport(pl.Callback):
    """Write `rank<N>.json` into the run folder when training ends."""

    def on_train_end(self, trainer, pl_module) -> None:
        checksum = sum(float(p.detach().double().sum()) for p in pl_module.parameters())
        report = {
            "global_rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "node": os.environ.get("SLURMD_NODENAME"),
            "backend": torch.distributed.get_backend() if trainer.world_size > 1 else None,
            "global_step": trainer.global_step,
            "param_checksum": checksum,
        }
        path = Path(trainer.default_root_dir) / f"rank{trainer.global_rank}.json"
        path.write_text(json.dumps(report))
