"""Overrides that shrink any comparison preset to a few CPU steps for the tests."""

TINY_TRAINING = (
    "trainer.max_steps=3",
    "trainer.val_check_interval=3",
    "callbacks.checkpointing.last_every_n_steps=3",
    "logger=none",
    "data.synthesis.pieces_per_form=8",
    "data.max_seq_len=256",
)
