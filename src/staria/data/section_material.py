"""Section material: the notes one letter of a synthetic form may use, whichever source made
it (`composition`: composed from nothing; `stitching`: the start of a real MIDI file), and the
millisecond grid both keep their times on."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from staria.tokenizer import TIME_STEP_MS
from staria.tokenizer.midi_io import DRUM_FAMILY_INDEX, FAMILIES

PIANO = FAMILIES.index("piano")


class SynthesisError(RuntimeError):
    """Synthesis cannot honour its configuration (too few source files, unreachable length)."""


@dataclass(frozen=True)
class SectionMaterial:
    """The notes one letter may use, times in ms from its start, sorted by onset.

    A section plays a prefix of the material that ends at one of `cut_points_ms`; every
    occurrence of the letter plays the same prefix.
    """

    family: np.ndarray
    pitch: np.ndarray
    velocity: np.ndarray
    onset_ms: np.ndarray
    end_ms: np.ndarray
    cut_points_ms: np.ndarray
    pedal_ms: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), dtype=np.int64))

    def tokens_before(self, cut_ms: np.ndarray) -> np.ndarray:
        """Note tokens (3 per pitched note, 2 per drum hit) of notes starting before each cut."""
        per_note = np.where(self.family == DRUM_FAMILY_INDEX, 2, 3)
        cumulative = np.concatenate([[0], np.cumsum(per_note)])
        return cumulative[np.searchsorted(self.onset_ms, cut_ms, side="left")]

    @property
    def capacity(self) -> int:
        return int(self.tokens_before(self.cut_points_ms[-1:])[0])

    def prefix(self, budget_tokens: float) -> SectionMaterial:
        """The longest prefix within `budget_tokens` note tokens (at least one cut point)."""
        fits = self.tokens_before(self.cut_points_ms) <= budget_tokens
        cut = self.cut_points_ms[max(int(np.count_nonzero(fits)) - 1, 0)]
        kept = self.onset_ms < cut
        pedal = self.pedal_ms[self.pedal_ms[:, 0] < cut]
        pedal = np.stack([pedal[:, 0], np.minimum(pedal[:, 1], cut - TIME_STEP_MS)], axis=1)
        return SectionMaterial(
            self.family[kept],
            self.pitch[kept],
            self.velocity[kept],
            self.onset_ms[kept],
            np.minimum(self.end_ms[kept], cut),
            np.array([cut]),
            pedal,
        )

    @property
    def duration_ms(self) -> int:
        return int(self.cut_points_ms[-1])


def on_grid(milliseconds: np.ndarray) -> np.ndarray:
    """Round to the tokenizer's time step, so quantization never moves a note across a boundary."""
    return (np.round(np.asarray(milliseconds) / TIME_STEP_MS) * TIME_STEP_MS).astype(np.int64)
