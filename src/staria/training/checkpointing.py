"""Checkpoints of a run: top-k on a validation metric, a periodic `last.ckpt`, and a history.

Lightning already writes each checkpoint atomically (an fsspec transaction: a temporary file
moved into place), so nothing is added there; a checkpoint that still fails to load is skipped
on resume (`resume.resume_point`). `checkpoint_history.json` records every checkpoint written
and removed, so a run's checkpoints can be accounted for after top-k pruning.
"""

import json
import time
from pathlib import Path

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint

from staria.training.resume import HISTORY_FILE, RngStateCallback, write_json_atomic


class CheckpointHistory:
    """Append-only list of checkpoint events in `checkpoint_dir/checkpoint_history.json`."""

    def __init__(self, checkpoint_dir: Path):
        self.path = Path(checkpoint_dir) / HISTORY_FILE

    def events(self) -> list[dict]:
        return json.loads(self.path.read_text()) if self.path.is_file() else []

    def record(self, event: str, trainer: "pl.Trainer", filepath: str, metric: str | None) -> None:
        """Rank zero writes; the whole file is replaced atomically on each event."""
        if not trainer.is_global_zero:
            return
        value = trainer.callback_metrics.get(metric) if metric else None
        entry = {
            "event": event,
            "path": str(filepath),
            "step": trainer.global_step,
            "epoch": trainer.current_epoch,
            "metric": metric,
            "value": None if value is None else float(value),
            "time": time.time(),
        }
        write_json_atomic(self.path, [*self.events(), entry])


class RecordedModelCheckpoint(ModelCheckpoint):
    """Lightning's ModelCheckpoint that reports each file it writes or deletes to a history."""

    def __init__(self, history: CheckpointHistory, **kwargs):
        super().__init__(**kwargs)
        self.history = history

    def _save_checkpoint(self, trainer: "pl.Trainer", filepath: str) -> None:
        super()._save_checkpoint(trainer, filepath)
        self.history.record("written", trainer, filepath, self.monitor)

    def _remove_checkpoint(self, trainer: "pl.Trainer", filepath: str) -> None:
        super()._remove_checkpoint(trainer, filepath)
        self.history.record("removed", trainer, filepath, self.monitor)


def setup_checkpointing(
    checkpoint_dir: str | Path,
    monitor: str = "val/loss",
    save_top_k: int = 2,
    last_every_n_steps: int = 100,
) -> list[pl.Callback]:
    """Top-k checkpoints on `monitor` after each validation, `last.ckpt` every n steps.

    Also returns the callback that stores RNG states in every checkpoint, which resume needs.
    """
    if save_top_k < 0 or last_every_n_steps < 1:
        raise ValueError(
            f"save_top_k={save_top_k} must be at least 0 and last_every_n_steps="
            f"{last_every_n_steps} at least 1"
        )
    history = CheckpointHistory(Path(checkpoint_dir))
    best = RecordedModelCheckpoint(
        history,
        dirpath=checkpoint_dir,
        filename="epoch{epoch}-step{step}-" + monitor.replace("/", "_") + "{" + monitor + ":.4f}",
        auto_insert_metric_name=False,
        monitor=monitor,
        mode="min",
        save_top_k=save_top_k,
    )
    last = RecordedModelCheckpoint(
        history,
        dirpath=checkpoint_dir,
        save_top_k=0,
        save_last=True,
        every_n_train_steps=last_every_n_steps,
        save_on_train_epoch_end=True,
    )
    return [best, last, RngStateCallback()]
