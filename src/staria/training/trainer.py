"""Lightning's Trainer with every interval counted in optimizer steps."""

import lightning.pytorch as pl


class Trainer(pl.Trainer):
    """`lightning.pytorch.Trainer` whose integer `val_check_interval` counts optimizer steps,
    like `max_steps`, checkpoints, logging and the stage schedule do: under
    `accumulate_grad_batches=k`, Lightning's own count (micro-batches) is k times it, so a
    validation always follows a complete optimizer step. A float (a fraction of an epoch) is
    passed on unchanged. Every other argument is Lightning's.
    """

    def __init__(self, *, val_check_interval=None, accumulate_grad_batches: int = 1, **kwargs):
        if isinstance(val_check_interval, int) and not isinstance(val_check_interval, bool):
            val_check_interval *= accumulate_grad_batches
        super().__init__(
            val_check_interval=val_check_interval,
            accumulate_grad_batches=accumulate_grad_batches,
            **kwargs,
        )
