"""Checkpoint-on-signal: SLURM time limits and preemption (SIGUSR2 from submitit, SIGTERM from
`scancel` or a job step's end) and Ctrl-C (SIGINT) all stop a run the same way.

The handler only sets a flag. At the next optimizer-step boundary (never inside a
gradient-accumulation window) all ranks agree through an all-reduce, the run's checkpoint
writer saves `last.ckpt`, and `Preempted` ends `fit` at the next hook (Lightning logs the
step's metrics in between): no validation or anything else runs between the signal and the
save, and none after it but a batch fetch. A signal during validation stops it at the next
validation batch without a save (the run resumes from the last `last.ckpt` and validates
again). The handler that was installed before ours (submitit's requeue handler under SLURM) is
then called by `train.py`, so the job requeues; resume continues from the saved step. A signal
at a step that validates stops before that validation without a save (a save there would make
the resumed run skip it). Until then a further signal only sets the flag again.

Our handlers go in at `on_train_start`, after Lightning's signal connector has installed its
SIGTERM handler (which would stop the run without this checkpoint); the handler chained to is
the one in place before `fit`. A second Ctrl-C stops at once, without a save.
"""

import signal
import sys

import lightning.pytorch as pl
import torch

from staria.training.checkpointing import RunCheckpoints


class Preempted(Exception):
    """Raised out of `fit` once the preemption checkpoint is written (or, at or during a
    validation, once the run stopped without one)."""

    def __init__(self, received: signal.Signals, step: int, saved: bool):
        super().__init__(
            f"{received.name} at step {step}: "
            + (
                "last.ckpt saved"
                if saved
                else "stopped before a validation, no new checkpoint (the run resumes from "
                "the last one)"
            )
        )
        self.signal, self.step, self.saved = received, step, saved


class PreemptionCheckpoint(pl.Callback):
    """Save `last.ckpt` and stop at the first step boundary after one of `signals`."""

    def __init__(self, signals: tuple[str, ...] = ("SIGUSR2", "SIGTERM", "SIGINT")):
        unknown = [name for name in signals if name not in signal.Signals.__members__]
        if unknown:
            raise ValueError(f"signals={list(signals)}: {unknown} are not signal names")
        self.signals = [signal.Signals[name] for name in signals]
        self.signal_received: signal.Signals | None = None
        self.previous_handlers: dict[signal.Signals, object] = {}
        self._replaced_handlers: dict[signal.Signals, object] = {}
        self._stop: Preempted | None = None

    def _on_signal(self, signum: int, frame) -> None:
        received = signal.Signals(signum)
        if received == signal.SIGINT and self.signal_received == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now, no checkpoint
        if received == signal.SIGINT:
            print(
                "\nCtrl-C: saving at the next step boundary, then stopping "
                "(Ctrl-C again stops at once, without a save)",
                file=sys.stderr,
                flush=True,
            )
        self.signal_received = self.signal_received or received

    def setup(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule", stage: str) -> None:
        if stage == "fit" and not isinstance(trainer.checkpoint_callback, RunCheckpoints):
            raise ValueError(
                "callbacks.preemption needs the run's checkpoint writer (callbacks.checkpointing)"
            )

    def on_fit_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self.previous_handlers = {sig: signal.getsignal(sig) for sig in self.signals}

    def on_train_start(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        for sig in self.signals:
            self._replaced_handlers[sig] = signal.signal(sig, self._on_signal)
        connector = trainer._signal_connector  # a SIGTERM Lightning caught during setup
        if signal.SIGTERM in self.signals and connector.received_sigterm:
            connector.received_sigterm = False  # else Lightning stops without our checkpoint
            self.signal_received = self.signal_received or signal.SIGTERM

    def _any_rank_signalled(self, trainer: "pl.Trainer", pl_module) -> bool:
        received = torch.tensor(self.signal_received is not None, device=pl_module.device)
        return bool(trainer.strategy.reduce_boolean_decision(received, all=False))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        writer: RunCheckpoints = trainer.checkpoint_callback
        if self._stop is not None or not writer.at_step_boundary(trainer):
            return
        if not self._any_rank_signalled(trainer, pl_module):
            return
        if writer.validation_follows(trainer):
            # A save now would make the resumed run skip this step's validation: stop before
            # it, unsaved; the run resumes from the last `last.ckpt` and validates here again.
            self._stop = Preempted(self._received(), trainer.global_step, saved=False)
            return
        if writer.last_step != trainer.global_step:
            writer.save_last(trainer)
        # Raised at the next hook, once Lightning has logged this step's metrics: a
        # validation (`on_validation_start`) or the next batch, whichever comes first.
        self._stop = Preempted(self._received(), trainer.global_step, saved=True)

    def _stop_if_saved(self, *args, **kwargs) -> None:
        if self._stop is not None:
            raise self._stop

    on_train_batch_start = on_validation_start = _stop_if_saved

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if trainer.state.fn == "fit" and self._any_rank_signalled(trainer, pl_module):
            raise Preempted(self._received(), trainer.global_step, saved=False)

    def _received(self) -> signal.Signals:
        return self.signal_received or signal.SIGTERM  # another rank's signal

    def on_fit_end(self, trainer: "pl.Trainer", pl_module: "pl.LightningModule") -> None:
        self._restore_handlers()

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, Preempted):  # else `chain` restores them, after teardown
            self._restore_handlers()

    def _restore_handlers(self) -> None:
        for sig, handler in self._replaced_handlers.items():
            signal.signal(sig, handler)
        self._replaced_handlers = {}

    def chain(self, received: signal.Signals) -> bool:
        """Call the handler that was in place before `fit` (submitit's requeue); whether there
        was one."""
        self._restore_handlers()  # until now a late signal only set the flag again
        previous = self.previous_handlers.get(received)
        if callable(previous) and previous is not signal.default_int_handler:
            previous(received, None)
            return True
        return False
