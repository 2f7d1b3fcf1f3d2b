"""Cost of reading MIDI grows linearly with the file, whatever its content.

Three files built to cost (a tempo change before every note; every note of a pitch struck at
one tick before its note-offs; a pedal event between notes) are tokenized at 1x and 8x their
size; each line prints CPU seconds per note at both sizes and their ratio (1.0 = linear; the
quadratic tempo sum this replaced gave about 8 here). One thread; all figures from this run.
What isolating each file in a worker costs is `bench_index.py`'s figure.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import tempfile
import time
from pathlib import Path

import mido

from staria.tokenizer import MusicTokenizerWithStyle


def _save(track: list) -> bytes:
    midi = mido.MidiFile(ticks_per_beat=480)
    midi.tracks = [mido.MidiTrack(track)]
    path = Path(tempfile.mkstemp(suffix=".mid")[1])
    midi.save(path)
    data = path.read_bytes()
    path.unlink()
    return data


def tempo_dense(notes: int) -> bytes:
    """A tempo change before every note."""
    track = []
    for i in range(notes):
        track.append(mido.MetaMessage("set_tempo", tempo=400_000 + i % 7 * 10_000, time=3))
        track.append(mido.Message("note_on", note=40 + i % 40, velocity=80, time=0))
        track.append(mido.Message("note_off", note=40 + i % 40, time=2))
    return _save(track)


def same_tick_strikes(notes: int) -> bytes:
    """Groups of 500 note-ons of one pitch at one tick, then as many note-offs at the next."""
    track = []
    for group in range(notes // 500):
        track += [mido.Message("note_on", note=60, velocity=80, time=0)] * 500
        track += [mido.Message("note_off", note=60, time=10 if i == 0 else 0) for i in range(500)]
        track[-1000] = track[-1000].copy(time=5 if group else 0)
    return _save(track)


def pedal_dense(notes: int) -> bytes:
    """A sustain-pedal press and release around every note, on 16 channels."""
    track = []
    for i in range(notes):
        channel = i % 16
        track.append(mido.Message("control_change", control=64, value=127, channel=channel))
        track.append(mido.Message("note_on", note=60, velocity=80, channel=channel, time=2))
        track.append(mido.Message("note_off", note=60, channel=channel, time=2))
        track.append(mido.Message("control_change", control=64, value=0, channel=channel, time=1))
    return _save(track)


def cpu_per_note(tokenizer: MusicTokenizerWithStyle, data: bytes, notes: int) -> float:
    tokenizer.tokenize_ids(data)  # warm caches
    start = time.process_time()
    tokenizer.tokenize_ids(data)
    return (time.process_time() - start) / notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--notes", type=int, default=25_000, help="notes of the 1x files")
    args = parser.parse_args()
    tokenizer = MusicTokenizerWithStyle()
    print(f"{'file':<20}{'1x KB':>8}{'8x KB':>8}{'µs/note 1x':>12}{'µs/note 8x':>12}{'ratio':>8}")
    for build in (tempo_dense, same_tick_strikes, pedal_dense):
        small, large = build(args.notes), build(8 * args.notes)
        base = cpu_per_note(tokenizer, small, args.notes)
        scaled = cpu_per_note(tokenizer, large, 8 * args.notes)
        print(
            f"{build.__name__:<20}{len(small) / 1e3:>8.0f}{len(large) / 1e3:>8.0f}"
            f"{base * 1e6:>12.2f}{scaled * 1e6:>12.2f}{scaled / base:>8.2f}"
        )


if __name__ == "__main__":
    main()
