"""Step-based progress as plain log lines: readable in a terminal, a piped file, `train.log`
and a SLURM log alike (Lightning's bar counts epochs, shows "Epoch 12/-2" for step-based
training, and prints nothing to a file until a stage ends)."""

import logging
import math
import time

import lightning.pytorch as pl

log = logging.getLogger("staria.progress")


def duration(seconds: float) -> str:
    """`1h02m`, `4m05s` or `12s`."""
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"


class StepProgress(pl.Callback):
    """One line every `every_n_steps` optimizer steps or `every_s` seconds, whichever comes
    first: step of `max_steps`, training loss, learning rate, steps per second and the time
    left at that rate; one line per validation with its loss and the best so far."""

    def __init__(self, every_n_steps: int = 50, every_s: float = 60.0):
        if every_n_steps < 1 or every_s <= 0:
            raise ValueError(f"every_n_steps={every_n_steps} must be >= 1, every_s={every_s} > 0")
        self.every_n_steps, self.every_s = every_n_steps, every_s
        self._started: tuple[float, int] | None = None
        self._last_line = 0.0
        self._best = math.inf

    def on_train_start(self, trainer, pl_module) -> None:
        self._started = (time.monotonic(), trainer.global_step)
        self._last_line = time.monotonic()
        if trainer.is_global_zero:
            start = "resuming at" if trainer.global_step else "training from"
            log.info("%s step %d of %d", start, trainer.global_step, trainer.max_steps)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, now = trainer.global_step, time.monotonic()
        due = step % self.every_n_steps == 0 or now - self._last_line >= self.every_s
        if not trainer.is_global_zero or not due or self._started is None:
            return
        self._last_line = now
        started_at, first_step = self._started
        rate = (step - first_step) / max(now - started_at, 1e-9)
        metrics = trainer.callback_metrics
        parts = [f"step {step}/{trainer.max_steps}"]
        for key, fmt in (("train/loss", ".4f"), ("train/lr", ".2e")):
            if key in metrics:
                parts.append(f"{key.split('/')[1]} {float(metrics[key]):{fmt}}")
        parts.append(f"{rate:.2f} steps/s")
        if rate > 0 and trainer.max_steps > step:
            parts.append(f"{duration((trainer.max_steps - step) / rate)} left")
        log.info("  ".join(parts))

    def on_validation_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get("val/loss")
        if trainer.sanity_checking or not trainer.is_global_zero or value is None:
            return
        writer = trainer.checkpoint_callback  # its top-k outlives a resume
        kept = [e["value"] for e in getattr(writer, "best", [])]
        self._best = min([self._best, float(value), *kept])
        log.info(
            "step %d/%d  val/loss %.4f  (best %.4f)",
            trainer.global_step,
            trainer.max_steps,
            float(value),
            self._best,
        )
