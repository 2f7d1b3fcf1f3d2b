"""Piano-roll pictures of a generated sample beside its prompt snippets, section letters marked."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from staria.evaluation.notes import SectionedNotes

SECTION_COLORS = {"A": "tab:blue", "B": "tab:orange", "C": "tab:green", "D": "tab:red"}
UNSECTIONED_COLOR = "tab:gray"


def draw_piano_roll(axes: Axes, piece: SectionedNotes, title: str) -> None:
    """One bar per note (seconds against MIDI pitch), coloured by section letter; each section's
    first note gets a dashed line and its letter."""
    notes = piece.notes
    letters = np.array([*piece.letters, ""])[piece.note_section]  # index -1 -> ""
    colors = [SECTION_COLORS.get(letter, UNSECTIONED_COLOR) for letter in letters]
    start_s = np.asarray(notes.start_ms) / 1000
    axes.barh(
        notes.pitch, (notes.end_ms - notes.start_ms) / 1000, left=start_s, height=0.9, color=colors
    )
    sections, first_notes = np.unique(piece.note_section, return_index=True)
    for section, first in zip(sections, first_notes, strict=True):
        if section >= 0:
            axes.axvline(start_s[first], color="black", linestyle="--", linewidth=0.8)
            axes.annotate(
                piece.letters[section],
                (start_s[first], 1.0),
                xycoords=("data", "axes fraction"),
                xytext=(2, -12),
                textcoords="offset points",
                fontweight="bold",
            )
    axes.set_title(title, fontsize=9)
    axes.set_xlabel("seconds")
    if len(notes) == 0:
        axes.text(0.5, 0.5, "no notes", ha="center", va="center", transform=axes.transAxes)


def sample_figure_png(
    sample: SectionedNotes, prompts: Sequence[SectionedNotes], title: str
) -> bytes:
    """A PNG: prompt snippets (narrow, left) then the generated sample, sharing the pitch axis."""
    figure = Figure(figsize=(3 + 1.6 * len(prompts) + 6, 2.8), dpi=80)
    grid = figure.add_gridspec(1, len(prompts) + 1, width_ratios=[1] * len(prompts) + [4])
    sample_axes = figure.add_subplot(grid[0, -1])
    for index, prompt in enumerate(prompts):
        axes = figure.add_subplot(grid[0, index], sharey=sample_axes)
        draw_piano_roll(axes, prompt, f"prompt {''.join(prompt.letters) or index}")
    draw_piano_roll(sample_axes, sample, title)
    sample_axes.set_ylabel("pitch")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()
