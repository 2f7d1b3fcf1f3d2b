"""Overrides that shrink any comparison preset to a few CPU steps for the tests."""

from tests.harness import steps

TINY_TRAINING = (
    *steps(3),
    "logger=none",
    "data.synthesis.pieces_per_form=8",
    "data.max_seq_len=256",
)
