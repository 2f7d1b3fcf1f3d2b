"""A run's checkpoint folder, written by one writer: top-k on a validation metric, `last.ckpt`,
and `checkpoint_history.json`.

`RunCheckpoints` is the only code that writes or deletes checkpoints (preemption asks it for a
save). It keeps this invariant after any sequence of preemption, kill, requeue and rerun: the
folder holds the top-k files, one `last.ckpt` that is the newest state, and the history. How:

- every write goes to `.<name>.partial` in the checkpoint's own folder, is flushed to disk, then
  renamed into place (`AtomicCheckpointIO`); a partial file a kill left is removed on the next
  start;
- `last.ckpt` is written only at an optimizer-step boundary: every `last_every_n_steps`
  steps, after a validation that wrote a top-k file, at the end of training and on
  preemption. At a step that validates it is written after the validation,
  never before, so a kill during validation resumes before it and the validation is redone
  (after a top-k write, `last.ckpt` is a byte copy of that file);
- a resumed run deletes the checkpoints its history lists from steps past the resume point
  (the run repeats those steps exactly) and prunes top-k from the history, so no file leaks;
- each checkpoint records the run id that wrote it, so a damaged history is rebuilt from the
  files on disk that this run can be shown to have written.
"""

import json
import logging
import math
import os
import shutil
import time
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.fabric.utilities.seed import _collect_rng_states, _set_rng_states
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO

from staria.files import PARTIAL_SUFFIX, write_durably, write_json_atomic
from staria.training import safe_loading

log = logging.getLogger(__name__)

HISTORY_FILE = "checkpoint_history.json"
LAST_CHECKPOINT = "last.ckpt"
RUN_RECORD = "staria_run"  # checkpoint entry: {"run_id", "step", "value"}


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's torch checkpoint IO, written through a partial file in the target's folder
    (Lightning's own goes through a temporary file elsewhere, then a move)."""

    def save_checkpoint(self, checkpoint: dict, path, storage_options=None) -> None:
        write_durably(path, lambda handle: torch.save(checkpoint, handle))


def recorded_run(path: Path) -> dict | None:
    """The run record a Staria checkpoint carries (`RUN_RECORD`), or None for any file that
    does not load as data or has none."""
    try:
        checkpoint = safe_loading.load(path, False, map_location="cpu", mmap=True)
    except Exception:  # unreadable, damaged, or more than data: not provably ours
        return None
    record = checkpoint.get(RUN_RECORD) if isinstance(checkpoint, dict) else None
    return record if isinstance(record, dict) else None


class CheckpointHistory:
    """Every checkpoint written and removed, in `checkpoint_dir/checkpoint_history.json`.

    A history that does not parse is rebuilt from the checkpoints on disk whose run record
    names `run_id` (`events`); `record` then keeps the damaged file as `<name>.damaged`.
    """

    def __init__(self, checkpoint_dir: Path, run_id: str | None = None):
        self.path = Path(checkpoint_dir) / HISTORY_FILE
        self.run_id = run_id

    def _parsed(self) -> list[dict] | None:
        """The stored events, None when the file is damaged, [] when there is none."""
        if not self.path.is_file():
            return []
        try:
            events = json.loads(self.path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            return None
        valid = isinstance(events, list) and all(
            isinstance(e, dict) and isinstance(e.get("path"), str) and "event" in e for e in events
        )
        return events if valid else None

    def is_damaged(self) -> bool:
        return self._parsed() is None

    def events(self) -> list[dict]:
        """The history, or (damaged) one rebuilt from the checkpoints this run wrote."""
        events = self._parsed()
        return self.rebuilt() if events is None else events

    def rebuilt(self) -> list[dict]:
        """A `written` event for each checkpoint on disk whose run record names this run."""
        events = []
        for path in sorted(self.path.parent.glob("*.ckpt")):
            record = recorded_run(path)
            if record is None or record.get("run_id") != self.run_id:
                continue
            best = path.name != LAST_CHECKPOINT and record.get("value") is not None
            events.append(
                {
                    "event": "written",
                    "path": path.name,
                    "step": record.get("step"),
                    "metric": record.get("monitor") if best else None,
                    "value": record.get("value") if best else None,
                    "time": path.stat().st_mtime,
                    "rebuilt": True,
                }
            )
        return events

    def written(self) -> dict[str, dict]:
        """Name -> the latest `written` event of each checkpoint not removed since."""
        current: dict[str, dict] = {}
        for event in self.events():
            name = Path(event["path"]).name
            if event["event"] == "written":
                current[name] = event
            elif event["event"] == "removed":
                current.pop(name, None)
        return current

    def record(
        self, event: str, path: Path, step: int, metric: str | None, value: float | None, **extra
    ) -> None:
        """Append one event; the whole file is replaced atomically."""
        events = self._parsed()
        if events is None:
            events = self.rebuilt()
            damaged = self.path.with_name(f"{self.path.name}.damaged")
            os.replace(self.path, damaged)
            log.warning(
                "%s was damaged: kept as %s, rebuilt from %d checkpoints on disk",
                self.path,
                damaged,
                len(events),
            )
        entry = {
            "event": event,
            "path": Path(path).name,  # in this folder: a moved or copied run stays whole
            "step": step,
            "metric": metric,
            "value": value,
            "time": time.time(),
            **extra,
        }
        write_json_atomic(self.path, [*events, entry])


class RunCheckpoints(Checkpoint):
    """The run's single checkpoint writer (module docstring): top-k files on `monitor` (mode
    min), `last.ckpt` every `last_every_n_steps` optimizer steps, and the history.

    Only rank 0 touches files; every rank calls `trainer.save_checkpoint` (it synchronises).
    Under `trainer.fast_dev_run` it writes nothing, as Lightning's own checkpoint callback
    (a one-batch check of a full-size preset would otherwise write gigabytes).
    """

    def __init__(
        self,
        checkpoint_dir: str | Path,
        monitor: str = "val/loss",
        save_top_k: int = 2,
        last_every_n_steps: int = 100,
        run_id: str | None = None,
    ):
        if save_top_k < 0 or last_every_n_steps < 1:
            raise ValueError(
                f"save_top_k={save_top_k} must be at least 0 and last_every_n_steps="
                f"{last_every_n_steps} at least 1"
            )
        self.checkpoint_dir = Path(checkpoint_dir)
        self.monitor = monitor
        self.save_top_k = save_top_k
        self.last_every_n_steps = last_every_n_steps
        self.run_id = run_id
        self.history = CheckpointHistory(self.checkpoint_dir, run_id)
        self.best: list[dict] = []  # written events of the current top-k, best first
        self.last_step: int | None = None
        self._step_at_batch_start: int | None = None
        self._record: dict = {}

    # --- files -----------------------------------------------------------------------------

    def _save(self, trainer: "pl.Trainer", path: Path, value: float | None = None) -> None:
        self._record = {
            "run_id": self.run_id,
            "step": trainer.global_step,
            "monitor": self.monitor,
            "value": value,
        }
        trainer.save_checkpoint(path)
        if trainer.is_global_zero:
            metric = self.monitor if value is not None else None
            self.history.record("written", path, trainer.global_step, metric, value)

    def _remove(self, trainer: "pl.Trainer", path: Path, reason: str) -> None:
        if trainer.is_global_zero:
            path.unlink(missing_ok=True)
            self.history.record("removed", path, trainer.global_step, None, None, reason=reason)

    def save_last(self, trainer: "pl.Trainer", copy_of: Path | None = None) -> None:
        """`last.ckpt` of the current state: a byte copy of `copy_of` (a checkpoint of this
        very state, so the state is not serialised twice), else a full save. A copy, not a
        link: either file stays a fallback if the other is damaged."""
        path = self.checkpoint_dir / LAST_CHECKPOINT
        if copy_of is None:
            self._save(trainer, path)
        elif trainer.is_global_zero:
            with open(copy_of, "rb") as source:
                write_durably(path, lambda handle: shutil.copyfileobj(source, handle))
            self.history.record("written", path, trainer.global_step, None, None)
        self.last_step = trainer.global_step

    def validation_follows(self, trainer: "pl.Trainer") -> bool:
        """Whether Lightning validates right after this training batch (the decision it makes
        in `on_advance_end`, read here at `on_train_batch_end`; checked by the tests)."""
        fit_loop = trainer.fit_loop
        return bool(fit_loop.epoch_loop._should_check_val_fx(fit_loop._data_fetcher))

    # --- hooks ---------------------------------------------------------------------------

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        checkpoint[RUN_RECORD] = dict(self._record) or {
            "run_id": self.run_id,
            "step": trainer.global_step,
            "monitor": self.monitor,
            "value": None,
        }
        self._record = {}

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """After any restore: clear what a kill left, forget the future a resume repeats."""
        step = trainer.global_step
        if trainer.is_global_zero and self.checkpoint_dir.is_dir():
            for partial in self.checkpoint_dir.glob(f".*{PARTIAL_SUFFIX}"):
                partial.unlink(missing_ok=True)
            for name, event in sorted(self.history.written().items()):
                if (event.get("step") or 0) > step:
                    self._remove(
                        trainer,
                        self.checkpoint_dir / name,
                        f"newer than step {step}, which this run resumes from",
                    )
        best = []
        if trainer.is_global_zero and self.checkpoint_dir.is_dir():
            best = sorted(
                (
                    e
                    for name, e in self.history.written().items()
                    if e.get("metric") == self.monitor
                    and e.get("value") is not None
                    and (self.checkpoint_dir / name).is_file()
                ),
                key=lambda e: (e["value"], e["step"]),
            )
        self.best = trainer.strategy.broadcast(best)  # every rank decides top-k alike
        self._prune(trainer)
        self.last_step = step if step > 0 else None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._step_at_batch_start = trainer.global_step

    def at_step_boundary(self, trainer: "pl.Trainer") -> bool:
        """Whether the batch that just ended completed an optimizer step (not inside a
        gradient-accumulation window)."""
        return trainer.global_step != self._step_at_batch_start

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if (
            not trainer.fast_dev_run
            and self.at_step_boundary(trainer)
            and step % self.last_every_n_steps == 0
            and not self.validation_follows(trainer)
        ):
            self.save_last(trainer)

    def on_validation_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or trainer.fast_dev_run:
            return
        best = self._save_top_k(trainer)
        if best is not None or trainer.global_step % self.last_every_n_steps == 0:
            self.save_last(trainer, copy_of=best)

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        """The final state as `last.ckpt`, and no partial file left: also when a resume found
        nothing left to train (Lightning then skips `on_train_start`/`on_train_end`)."""
        if self.last_step != trainer.global_step and not trainer.fast_dev_run:
            self.save_last(trainer)
        if trainer.is_global_zero:
            for partial in self.checkpoint_dir.glob(f".*{PARTIAL_SUFFIX}"):
                partial.unlink(missing_ok=True)

    # --- top-k ---------------------------------------------------------------------------

    def _save_top_k(self, trainer: "pl.Trainer") -> Path | None:
        """Write this validation's checkpoint if it is among the best `save_top_k`."""
        value = trainer.callback_metrics.get(self.monitor)
        if self.save_top_k == 0 or value is None:
            return None
        value = float(value)
        if math.isnan(value):
            return None
        step = trainer.global_step
        self.best = [e for e in self.best if e["step"] != step]
        if len(self.best) >= self.save_top_k and value >= self.best[-1]["value"]:
            return None
        name = (
            f"epoch{trainer.current_epoch}-step{step}-"
            f"{self.monitor.replace('/', '_')}{value:.4f}.ckpt"
        )
        path = self.checkpoint_dir / name
        self._save(trainer, path, value)
        self.best.append({"path": path.name, "step": step, "value": value})
        self.best.sort(key=lambda e: (e["value"], e["step"]))
        self._prune(trainer)
        return path

    def _prune(self, trainer: "pl.Trainer") -> None:
        while len(self.best) > self.save_top_k:
            worst = self.best.pop()
            name = Path(worst["path"]).name  # never a path into another folder
            self._remove(trainer, self.checkpoint_dir / name, f"not in the top {self.save_top_k}")


class RngStateCallback(pl.Callback):
    """Lightning does not checkpoint RNG states; this puts torch/numpy/python RNG into each one.

    numpy's state is stored as a plain tuple (its 624 key words as a list), so a checkpoint
    loads with plain `torch.load` (weights_only) and no allowlist.
    """

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        states = _collect_rng_states()
        name, keys, *rest = states["numpy"]
        states["numpy"] = (name, keys.tolist(), *rest)
        checkpoint["rng_states"] = states

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if "rng_states" in checkpoint:
            states = dict(checkpoint["rng_states"])
            name, keys, *rest = states["numpy"]
            states["numpy"] = (name, np.asarray(keys, dtype=np.uint32), *rest)
            _set_rng_states(states)


def setup_checkpointing(
    checkpoint_dir: str | Path,
    monitor: str = "val/loss",
    save_top_k: int = 2,
    last_every_n_steps: int = 100,
    run_id: str | None = None,
) -> list[pl.Callback]:
    """The run's checkpoint writer and the callback that stores RNG states, which resume needs."""
    return [
        RunCheckpoints(checkpoint_dir, monitor, save_top_k, last_every_n_steps, run_id),
        RngStateCallback(),
    ]
