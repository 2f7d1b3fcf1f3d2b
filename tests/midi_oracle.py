"""mido 1.3.3 (Aria's MIDI reader) as the oracle for Staria's reader, and files to test it on.

Staria's reader is stricter than mido in two documented ways (`staria.midi_events`): it
refuses variable-length quantities over 4 bytes and SMPTE or zero time divisions. The oracle
is mido with exactly those two rules added, so every other decision is mido's own.
"""

import io
import struct
from pathlib import Path
from unittest import mock

import mido
import mido.midifiles.midifiles as mido_files
import numpy as np

from staria.midi_events import MAX_VLQ_BYTES, NOTE_OFF, NOTE_ON, PEDAL, PROGRAM, read_events
from staria.paths import cases_dir

FIXTURES = Path(__file__).parent / "fixtures"


def case_folders() -> list[Path]:
    """Hostile-case folders: the vendored copy, and the shared one when it is there."""
    shared = cases_dir() / "midi"
    vendored = FIXTURES / "cases" / "midi"
    return [vendored, shared] if shared.is_dir() else [vendored]


def _read_variable_int_smf(infile) -> int:
    value = 0
    for _ in range(MAX_VLQ_BYTES):
        byte = mido_files.read_byte(infile)
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value
    raise OSError(f"variable-length quantity longer than {MAX_VLQ_BYTES} bytes")


def mido_file(data: bytes) -> mido.MidiFile:
    """mido's reading of `data` under the two stricter rules; raises where it refuses."""
    with mock.patch.object(mido_files, "read_variable_int", _read_variable_int_smf):
        midi = mido.MidiFile(file=io.BytesIO(data))
    if midi.ticks_per_beat <= 0:  # mido reads the division as signed: <= 0 is SMPTE or zero
        raise OSError(f"time division {midi.ticks_per_beat}")
    return midi


def mido_accepts(data: bytes) -> bool:
    try:
        mido_file(data)
    except Exception:  # mido raises OSError, EOFError, KeySignatureError, IndexError, ...
        return False
    return True


def mido_events(midi: mido.MidiFile) -> tuple[list, list]:
    """The events Staria keeps, from mido's messages: (tick, track, kind, channel, detail)."""
    events, tempos = [], []
    for track_index, track in enumerate(midi.tracks):
        now = 0
        for message in track:
            now += message.time
            if message.type == "set_tempo":
                tempos.append((now, message.tempo))
            elif message.type == "note_on" and message.velocity > 0:
                events.append((now, track_index, NOTE_ON, message.channel, message.note))
            elif message.type in ("note_on", "note_off"):
                events.append((now, track_index, NOTE_OFF, message.channel, message.note))
            elif message.type == "control_change" and message.control == 64:
                events.append((now, track_index, PEDAL, message.channel, message.value))
            elif message.type == "program_change":
                events.append((now, track_index, PROGRAM, message.channel, message.program))
    return events, tempos


def our_events(data: bytes) -> tuple[list, list]:
    """The same view of Staria's `read_events`."""
    ev = read_events(data)
    detail = np.where(ev.kind == PEDAL, ev.value, ev.key)
    columns = (ev.tick, ev.track, ev.kind, ev.channel, detail)
    events = list(zip(*(c.tolist() for c in columns), strict=True))
    return events, list(zip(ev.tempo_tick.tolist(), ev.tempo.tolist(), strict=True))


def midi_file(*tracks: list, ticks_per_beat: int = 480) -> bytes:
    """A type-1 file of mido messages, written by mido."""
    midi = mido.MidiFile(ticks_per_beat=ticks_per_beat)
    midi.tracks = [mido.MidiTrack(track) for track in tracks]
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


def raw_track_file(body: bytes, ticks_per_beat: int = 480) -> bytes:
    """A one-track file around the raw MTrk `body` bytes, whatever they hold."""
    header = b"MThd" + struct.pack(">Ihhh", 6, 0, 1, ticks_per_beat)
    return header + b"MTrk" + struct.pack(">I", len(body)) + body
