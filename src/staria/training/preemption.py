"""Checkpoint-on-signal for preemptible jobs (SLURM time limits, submitit's USR2, SIGTERM).

The signal handler only sets a flag; the checkpoint is written by the training loop at the next
step boundary, after all ranks agreed through an all-reduce (one rank's signal stops all). The
handler that was installed before ours (submitit's requeue handler under SLURM) is then called,
so the job requeues with a fresh `last.ckpt` and `resume.resume_point` continues from it.

Our handlers go in at `on_train_start`, after Lightning's signal connector has installed its
SIGTERM handler (it raises SIGTERMException and would stop the run without this checkpoint);
the handler chained to is the one in place before `fit` (submitit's, not Lightning's).
"""

import signal
from pathlib import Path

import lightning.pytorch as pl
import torch

from staria.training.checkpointing import CheckpointHistory
from staria.training.resume import LAST_CHECKPOINT


class PreemptionCheckpoint(pl.Callback):
    """Save `last.ckpt` and stop at the step after a preemption signal arrives."""

    def __init__(
        self, checkpoint_dir: str | Path, signals: tuple[str, ...] = ("SIGUSR2", "SIGTERM")
    ):
        self.checkpoint_dir = Path(checkpoint_dir)
        unknown = [name for name in signals if name not in signal.Signals.__members__]
        if unknown:
            raise ValueError(f"signals={list(signals)}: {unknown} are not signal names")
        self.signals = [signal.Signals[name] for name in signals]
        self.signal_received: signal.Signals | None = None
        self.preempted = False
        self._previous_handlers: dict[signal.Signals, object] = {}
        self._replaced_handlers: dict[signal.Signals, object] = {}

    def _on_signal(self, signum: int, frame) -> None:
        self.signal_received = signal.Signals(signum)

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._previous_handlers = {sig: signal.getsignal(sig) for sig in self.signals}

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        for sig in self.signals:
            self._replaced_handlers[sig] = signal.signal(sig, self._on_signal)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        received = torch.tensor(self.signal_received is not None, device=pl_module.device)
        if not trainer.strategy.reduce_boolean_decision(received, all=False):
            return
        path = self.checkpoint_dir / LAST_CHECKPOINT
        trainer.save_checkpoint(path)
        CheckpointHistory(self.checkpoint_dir).record("written", trainer, str(path), None)
        self.preempted = True
        trainer.should_stop = True

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._restore_handlers()
        previous = self._previous_handlers.get(self.signal_received)
        if self.preempted and callable(previous):
            previous(self.signal_received, None)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._restore_handlers()

    def _restore_handlers(self) -> None:
        for sig, handler in self._replaced_handlers.items():
            signal.signal(sig, handler)
        self._replaced_handlers = {}
