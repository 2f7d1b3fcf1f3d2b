"""`staria-tokenize`: round-trip report over a folder of MIDI files (the first `make demo` step)."""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pretty_midi
from rich.console import Console
from rich.table import Table

from staria.tokenizer import MusicTokenizerWithStyle
from staria.tokenizer.midi_io import MidiReadError, read_notes, scan_midi_files


@dataclass(frozen=True)
class RoundTripRow:
    """One file's round trip: MIDI -> tokens -> MIDI, onsets compared note by note in ms."""

    file: str
    notes_in: int
    notes_out: int
    tokens: int
    max_onset_error_ms: float
    mean_onset_error_ms: float


def write_example_midi(folder: Path) -> list[Path]:
    """Write a few bars of piano with a sustain pedal and a tempo change (the demo's input)."""
    folder.mkdir(parents=True, exist_ok=True)
    midi = pretty_midi.PrettyMIDI(initial_tempo=100.0)
    piano = pretty_midi.Instrument(program=0, name="piano")
    chords = [(60, 64, 67), (57, 60, 64), (53, 57, 60), (55, 59, 62)]
    beat = 0.6
    for bar, chord in enumerate(chords * 2):
        bar_start = bar * 4 * beat
        for pitch in chord:
            piano.notes.append(pretty_midi.Note(70, pitch - 12, bar_start, bar_start + beat))
        for step in range(4):
            start = bar_start + step * beat
            melody = chord[step % 3] + 12
            piano.notes.append(pretty_midi.Note(80 + 5 * step, melody, start, start + beat / 2))
        piano.control_changes.append(pretty_midi.ControlChange(64, 127, bar_start + 0.01))
        piano.control_changes.append(pretty_midi.ControlChange(64, 0, bar_start + 4 * beat - 0.05))
    midi.instruments.append(piano)
    # pretty_midi has no tempo-change API; a faster second half is written by re-timing ticks.
    midi._tick_scales.append((midi.time_to_tick(4 * 4 * beat), 60.0 / (140.0 * midi.resolution)))
    midi._update_tick_to_time(midi.time_to_tick(piano.get_end_time()) + 1)
    path = folder / "example_piano.mid"
    midi.write(str(path))
    return [path]


def roundtrip_report(
    folder: Path, console: Console | None = None
) -> tuple[list[RoundTripRow], dict[str, str]]:
    """Tokenize and detokenize every MIDI file under `folder`; print and return rows and skips."""
    tokenizer = MusicTokenizerWithStyle()
    rows: list[RoundTripRow] = []
    skipped: dict[str, str] = {}
    folder = folder.resolve()
    paths = scan_midi_files([folder])
    for path in paths:
        name = str(path.relative_to(folder))
        try:
            notes_in = read_notes(path)
        except MidiReadError as error:
            skipped[name] = error.reason
            continue
        # The file is read once: `tokenize(path)` is `decode(notes_to_ids(read_notes(path)))`.
        ids = tokenizer.notes_to_ids(notes_in)
        notes_out = tokenizer.ids_to_notes(ids)
        onsets_in = notes_in.start_ms - notes_in.start_ms[0]
        onsets_out = np.sort(notes_out.start_ms)
        shared = min(len(onsets_in), len(onsets_out))
        error = np.abs(np.sort(onsets_in)[:shared] - onsets_out[:shared])
        rows.append(
            RoundTripRow(
                file=name,
                notes_in=len(notes_in),
                notes_out=len(notes_out),
                tokens=len(ids),
                max_onset_error_ms=float(error.max(initial=0.0)),
                mean_onset_error_ms=float(error.mean()) if shared else 0.0,
            )
        )
    _print_report(rows, skipped, console or Console())
    return rows, skipped


def _print_report(rows: list[RoundTripRow], skipped: dict[str, str], console: Console) -> None:
    table = Table(title="MIDI -> tokens -> MIDI round trip")
    for column in ("file", "notes in", "notes out", "tokens", "max onset err ms", "mean ms"):
        table.add_column(column, justify="left" if column == "file" else "right")
    for row in rows:
        table.add_row(
            row.file,
            str(row.notes_in),
            str(row.notes_out),
            str(row.tokens),
            f"{row.max_onset_error_ms:.1f}",
            f"{row.mean_onset_error_ms:.2f}",
        )
    console.print(table)
    for name, reason in skipped.items():
        console.print(f"[yellow]skipped[/yellow] {name}: {reason}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="staria-tokenize", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    roundtrip = commands.add_parser("roundtrip", help="round-trip report over a MIDI folder")
    roundtrip.add_argument(
        "folder", nargs="?", type=Path, help="MIDI folder (default: a built-in example)"
    )
    args = parser.parse_args(argv)
    if args.folder is not None:
        roundtrip_report(args.folder)
        return
    with tempfile.TemporaryDirectory() as temporary:
        write_example_midi(Path(temporary))
        roundtrip_report(Path(temporary))


if __name__ == "__main__":
    main()
