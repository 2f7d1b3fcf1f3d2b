"""MIDI files <-> note arrays on a millisecond clock: the part of tokenization that touches MIDI.

Parsing goes through symusic (compiled) so the bulk path never loops over notes in Python;
the arrays it returns carry everything the tokenizer needs, already pedal-resolved.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pretty_midi
import symusic

# General MIDI groups programs in blocks of 8; None marks the groups Aria drops.
PROGRAM_GROUP_FAMILIES: tuple[str | None, ...] = (
    "piano",
    None,  # chromatic percussion
    "organ",
    "guitar",
    "bass",
    "strings",
    "ensemble",
    "brass",
    "reed",
    "pipe",
    "synth_lead",
    None,  # synth pad
    None,  # synth effects
    None,  # ethnic
    None,  # percussive
    None,  # sound effects
)
PITCHED_FAMILIES: tuple[str, ...] = tuple(f for f in PROGRAM_GROUP_FAMILIES if f is not None)
DRUM = "drum"
FAMILIES: tuple[str, ...] = (*PITCHED_FAMILIES, DRUM)
DRUM_FAMILY_INDEX = FAMILIES.index(DRUM)
DRUM_CHANNEL = 9
SUSTAIN_PEDAL_CC = 64
DEFAULT_TEMPO_US_PER_BEAT = 500_000

MidiSource = str | Path | bytes | pretty_midi.PrettyMIDI


class MidiReadError(Exception):
    """The one error for MIDI input that cannot be tokenized: corrupt, truncated or no notes."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True)
class NoteTable:
    """Notes of one piece, one entry per note, in start order; times in ms from the file start.

    `family` indexes `FAMILIES`; `end_ms` already includes sustain-pedal extension and the
    trimming of overlapping notes of the same pitch.
    """

    family: np.ndarray
    pitch: np.ndarray
    velocity: np.ndarray
    start_ms: np.ndarray
    end_ms: np.ndarray

    def __len__(self) -> int:
        return len(self.pitch)


def source_name(midi: MidiSource) -> str:
    """How error messages name an input that may not have a path."""
    if isinstance(midi, (str, Path)):
        return str(midi)
    return "<bytes>" if isinstance(midi, bytes) else "<PrettyMIDI>"


def _parse_score(midi: MidiSource) -> symusic.Score:
    if isinstance(midi, pretty_midi.PrettyMIDI):
        buffer = io.BytesIO()
        midi.write(buffer)
        midi = buffer.getvalue()
    try:
        if isinstance(midi, bytes):
            return symusic.Score.from_midi(midi)
        return symusic.Score.from_file(str(midi))
    except (RuntimeError, ValueError, OSError) as error:
        raise MidiReadError(source_name(midi), f"unreadable MIDI ({error})") from error


def ticks_to_ms(
    ticks: np.ndarray, tempo_ticks: np.ndarray, tempo_us: np.ndarray, tpq: int
) -> np.ndarray:
    """Milliseconds since tick 0 under a piecewise-constant tempo map (µs per beat)."""
    if len(tempo_ticks) == 0 or tempo_ticks[0] > 0:
        tempo_ticks = np.concatenate([[0], tempo_ticks])
        tempo_us = np.concatenate([[DEFAULT_TEMPO_US_PER_BEAT], tempo_us])
    ms_per_tick = tempo_us.astype(np.float64) / (1000.0 * tpq)
    segment_ms = np.diff(tempo_ticks) * ms_per_tick[:-1]
    segment_start_ms = np.concatenate([[0.0], np.cumsum(segment_ms)])
    segment = np.searchsorted(tempo_ticks, ticks, side="right") - 1
    return segment_start_ms[segment] + (ticks - tempo_ticks[segment]) * ms_per_tick[segment]


def _sustained_ends(
    ends: np.ndarray, controls: dict[str, np.ndarray], last_tick: int
) -> np.ndarray:
    """Move each note end that falls while the sustain pedal is down to the pedal's release.

    A pedal still down at the end releases at `last_tick`, the end of the last track with notes.
    """
    is_pedal = controls["number"] == SUSTAIN_PEDAL_CC
    if not is_pedal.any():
        return ends
    pedal_ticks = controls["time"][is_pedal].astype(np.int64)
    pedal_down = controls["value"][is_pedal] >= 64
    release_ticks = np.where(pedal_down, last_tick, pedal_ticks)
    next_release = np.minimum.accumulate(release_ticks[::-1])[::-1]
    # A pedal event at the very tick of a note-off does not hold that note.
    last_event = np.searchsorted(pedal_ticks, ends, side="left") - 1
    held = (last_event >= 0) & pedal_down[np.maximum(last_event, 0)]
    return np.where(held, np.maximum(next_release[np.maximum(last_event, 0)], ends), ends)


def read_notes(midi: MidiSource) -> NoteTable:
    """Parse MIDI into a `NoteTable`; `MidiReadError` if unreadable or without kept notes."""
    score = _parse_score(midi)
    last_note_end = max((track.end() for track in score.tracks if len(track.notes)), default=0)
    families, voices, pitches, velocities, starts, ends, raw_ends = [], [], [], [], [], [], []
    for voice, track in enumerate(score.tracks):
        family = DRUM if track.is_drum else PROGRAM_GROUP_FAMILIES[track.program // 8]
        if family is None or len(track.notes) == 0:
            continue
        notes = track.notes.numpy()
        start = notes["time"].astype(np.int64)
        end = start + notes["duration"]
        raw_ends.append(end)
        if family != DRUM:
            end = _sustained_ends(end, track.controls.numpy(), last_note_end)
        families.append(np.full(len(start), FAMILIES.index(family), dtype=np.int64))
        voices.append(np.full(len(start), voice, dtype=np.int64))
        pitches.append(notes["pitch"].astype(np.int64))
        velocities.append(notes["velocity"].astype(np.int64))
        starts.append(start)
        ends.append(end)
    if not starts:
        raise MidiReadError(source_name(midi), "no notes on any kept instrument")
    family, voice, pitch, velocity, start, end, raw_end = (
        np.concatenate(parts)
        for parts in (families, voices, pitches, velocities, starts, ends, raw_ends)
    )
    order = np.lexsort((raw_end, voice, start))
    tempos = score.tempos.numpy()
    tempo_ticks, tempo_us = tempos["time"].astype(np.int64), tempos["mspq"].astype(np.int64)
    to_ms = lambda ticks: ticks_to_ms(ticks[order], tempo_ticks, tempo_us, score.ticks_per_quarter)  # noqa: E731
    return NoteTable(family[order], pitch[order], velocity[order], to_ms(start), to_ms(end))
