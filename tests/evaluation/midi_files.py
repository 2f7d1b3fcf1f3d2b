"""Small MIDI files written for the evaluation tests."""

from pathlib import Path

import pretty_midi


def write_midi(path: Path, notes) -> Path:
    """One piano track of `(pitch, start_ms, duration_ms)` notes at velocity 80."""
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(80, p, s / 1000, (s + d) / 1000) for p, s, d in notes]
    midi.instruments.append(piano)
    midi.write(str(path))
    return path
