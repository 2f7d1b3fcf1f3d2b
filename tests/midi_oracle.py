"""mido 1.3.3 (Aria's MIDI reader) as the oracle for Staria's reader, and hostile files for it.

Staria's reader is stricter than mido in two documented ways (`staria.tokenizer.midi_events`): it
refuses variable-length quantities over 4 bytes and SMPTE or zero time divisions. The oracle
is mido with exactly those two rules added, so every other decision is mido's own.
"""

import io
import random
import struct
from pathlib import Path
from unittest import mock

import mido
import mido.midifiles.midifiles as mido_files
import numpy as np
import pretty_midi

from staria.paths import cases_dir
from staria.tokenizer.midi_events import (
    MAX_VLQ_BYTES,
    NOTE_OFF,
    NOTE_ON,
    PEDAL,
    PROGRAM,
    read_events,
)
from staria.tokenizer.midi_io import DRUM, FAMILIES, PROGRAM_GROUP_FAMILIES, NoteTable

FIXTURES = Path(__file__).parent / "fixtures"
# Three small real files the reader, fuzz and index tests start from, by name (in name order):
# the copies vendored with Aria's reference ids.
SMALL_MIDI = {
    path.name: path
    for path in (
        FIXTURES / "aria" / "aria-utils-tests" / "basic.mid",
        FIXTURES / "aria" / "symusic-tests" / "issue78_dump_abc.mid",
        FIXTURES / "aria" / "aria-example-prompts" / "waltz.mid",
    )
}


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


# Mutants of real files, of the kinds that break MIDI parsers in public bug reports.

# Meta types mido decodes with checks, plus text, end of track and an unknown one.
META_TYPES = (0x00, 0x01, 0x20, 0x21, 0x2F, 0x51, 0x54, 0x58, 0x59, 0x7F, 0x60)


def _vlq(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def _byte(rng: random.Random) -> int:
    """Any byte, or half the time a data byte (0..127), which more often keeps a file readable."""
    return rng.randrange(256) if rng.random() < 0.5 else rng.randrange(128)


def _huge_quantity(rng: random.Random) -> bytes:
    """A variable-length quantity of 4 to 12 bytes (a legal 4-byte one now and then)."""
    length = rng.randint(4, 12)
    return bytes(rng.randint(0x80, 0xFF) for _ in range(length - 1)) + bytes([rng.randint(0, 127)])


def _event(rng: random.Random) -> bytes:
    """A delta time and a meta or sysex event whose length may lie and whose data may be bad."""
    payload = bytes(_byte(rng) for _ in range(6))
    payload = payload[: rng.randint(0, 6)]
    length = len(payload) + rng.choice((0, 0, 0, -1, 1, 1000, 2**21))
    encoded_length = _vlq(max(length, 0)) if rng.random() < 0.8 else _huge_quantity(rng)
    if rng.random() < 0.6:
        body = bytes([0xFF, rng.choice(META_TYPES)]) + encoded_length + payload
    else:
        body = bytes([rng.choice((0xF0, 0xF7))]) + encoded_length + payload
    return bytes([rng.randint(0, 3)]) + body


def _chunks(data: bytes) -> list[tuple[int, int]]:
    """(length field position, body end) of each chunk header that the declared lengths reach."""
    chunks, pos = [], 0
    while pos + 8 <= len(data) and data[pos : pos + 4] in (b"MThd", b"MTrk"):
        end = pos + 8 + struct.unpack(">I", data[pos + 4 : pos + 8])[0]
        chunks.append((pos + 4, end))
        pos = end
    return chunks


def _resize(out: bytearray, at: int, change: int) -> None:
    """Move the declared length of the chunk holding `at` by `change` (the file stays framed)."""
    for length_at, end in _chunks(bytes(out)):
        if length_at + 4 <= at <= end:
            (size,) = struct.unpack(">I", out[length_at : length_at + 4])
            out[length_at : length_at + 4] = struct.pack(
                ">I", min(max(size + change, 0), 2**32 - 1)
            )
            return


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One (mostly) to three random mutations of `data`. Half the insertions and deletions
    land on an event boundary (a track's start, or before its end-of-track event) and half
    keep the chunk lengths true, so that many mutants stay readable and test the reader's
    rules rather than only its framing."""
    out = bytearray(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        at = rng.randrange(len(out) + 1)
        tracks = [c for c in _chunks(bytes(out)) if out[c[0] - 4 : c[0]] == b"MTrk"]
        if tracks and rng.random() < 0.5:
            length_at, end = rng.choice(tracks)
            at = length_at + 4 if rng.random() < 0.5 else max(end - 4, length_at + 4)
        keep_framing = rng.random() < 0.5
        before = len(out)
        kind = rng.randrange(7)
        if kind == 0 and out:  # flip bytes
            for _ in range(rng.randint(1, 4)):
                out[rng.randrange(len(out))] = _byte(rng)
        elif kind == 1:  # truncate
            del out[at:]
        elif kind == 2:  # insert random bytes
            out[at:at] = bytes(_byte(rng) for _ in range(rng.randint(1, 8)))
        elif kind == 3:  # delete a span
            del out[at : at + rng.randint(1, 16)]
        elif kind == 4 and (chunks := _chunks(bytes(out))):  # a chunk length that lies
            length_at, _ = rng.choice(chunks)
            (size,) = struct.unpack(">I", out[length_at : length_at + 4])
            size = rng.choice((size + rng.randint(-8, 8), rng.randrange(2**32), 0))
            out[length_at : length_at + 4] = struct.pack(">I", size % 2**32)
        elif kind == 5:  # a huge quantity where a delta time or a length is read
            out[at:at] = _huge_quantity(rng)
        else:  # an injected meta or sysex event
            out[at:at] = _event(rng)
        if keep_framing and kind in (2, 3, 5, 6):
            _resize(out, at, len(out) - before)
    return bytes(out)


def _random_message(rng: random.Random, time: int) -> mido.Message | mido.MetaMessage:
    channel = rng.choice((0, 0, 1, 9, rng.randrange(16)))
    kind = rng.randrange(8)
    if kind < 3:
        note_type = rng.choice(("note_on", "note_off"))
        return mido.Message(
            note_type,
            note=rng.randrange(128),
            velocity=rng.randrange(128),
            channel=channel,
            time=time,
        )
    if kind == 3:
        return mido.Message("control_change", control=64, value=rng.randrange(128), time=time)
    if kind == 4:
        return mido.Message(
            "program_change", program=rng.randrange(128), channel=channel, time=time
        )
    if kind == 5:
        return mido.MetaMessage("set_tempo", tempo=rng.randrange(1, 2**24), time=time)
    if kind == 6:
        return mido.Message("sysex", data=[rng.randrange(128) for _ in range(4)], time=time)
    return mido.UnknownMetaMessage(rng.choice((0x08, 0x0A, 0x60)), data=b"x", time=time)


def mutate_messages(data: bytes, rng: random.Random) -> bytes:
    """`data` re-written by mido after message-level edits: random messages (notes, pedal,
    programs, tempos, sysex, unknown metas) inserted with random delta times, some removed."""
    midi = mido.MidiFile(file=io.BytesIO(data))
    for track in midi.tracks:
        for _ in range(rng.randint(0, 12)):
            time = rng.choice((0, 0, rng.randrange(1, 2000), rng.randrange(2**28)))
            track.insert(rng.randrange(len(track)), _random_message(rng, time))
        for _ in range(rng.randint(0, 3)):
            if len(track) > 1:
                del track[rng.randrange(len(track) - 1)]
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


def tempo_dense_file(num_notes: int) -> bytes:
    """A valid file with a tempo change before every note: costly for a quadratic tempo sum."""
    track = []
    for index in range(num_notes):
        track.append(mido.MetaMessage("set_tempo", tempo=400_000 + index % 7 * 10_000, time=3))
        track.append(mido.Message("note_on", note=40 + index % 40, velocity=80, time=0))
        track.append(mido.Message("note_off", note=40 + index % 40, time=2))
    return midi_file(track)


def notes_to_pretty_midi(notes: NoteTable) -> pretty_midi.PrettyMIDI:
    """The reference for `notes_to_midi_bytes`: the same notes built note by note with
    pretty_midi, on a 1 ms tick grid (120 bpm, 500 ticks/beat), one instrument per family."""
    midi = pretty_midi.PrettyMIDI(resolution=500, initial_tempo=120.0)
    for family_index in np.unique(notes.family):
        family = FAMILIES[family_index]
        is_drum = family == DRUM
        program = 0 if is_drum else PROGRAM_GROUP_FAMILIES.index(family) * 8
        instrument = pretty_midi.Instrument(program=program, is_drum=is_drum, name=family)
        mine = notes.family == family_index
        instrument.notes = [
            pretty_midi.Note(velocity=int(v), pitch=int(p), start=s / 1000.0, end=e / 1000.0)
            for v, p, s, e in zip(
                notes.velocity[mine],
                notes.pitch[mine],
                notes.start_ms[mine],
                notes.end_ms[mine],
                strict=True,
            )
        ]
        midi.instruments.append(instrument)
    return midi
