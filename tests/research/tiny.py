"""Overrides that shrink any comparison preset to a few CPU steps for the tests: the one shrink
(`tests.harness.SHRINK`) and what the comparisons need beyond it."""

from tests.harness import SHRINK, steps

TINY_TRAINING = (
    *SHRINK,
    *steps(3),
    "data.synthesis.pieces_per_form=8",
    "data.max_seq_len=256",
)
