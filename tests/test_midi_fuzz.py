"""Differential fuzzing of the MIDI reader against mido, on seeded mutants of real files.

Each mutant is one to three mutations of a real file, of the kinds that break MIDI parsers in
public bug reports: flipped bytes, truncations, insertions and deletions, chunk lengths that
lie, huge variable-length quantities, and injected meta and sysex events with random (often
lying or invalid) payloads; or, for the event streams, the file re-written by mido with random
messages inserted at random delta times (running status, unknown metas, huge gaps).
On every mutant Staria and the oracle (`midi_oracle`) must agree on accept/refuse, and on
the event stream where both accept; tokenizing an accepted mutant must return or raise
`MidiReadError`, nothing else. `STARIA_FUZZ_CASES` sets the number of
mutants (`make fuzz` runs a long campaign); `STARIA_FUZZ_SEED` the seed.
"""

import contextlib
import io
import os
import random
import struct

import mido
import pytest
from midi_oracle import FIXTURES, mido_events, mido_file, our_events

from staria.midi_events import MidiFormatError
from staria.midi_io import MidiReadError

CASES = int(os.environ.get("STARIA_FUZZ_CASES", "3000"))
SEED = int(os.environ.get("STARIA_FUZZ_SEED", "0"))
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


def _seeds() -> list[bytes]:
    return [path.read_bytes() for path in sorted((FIXTURES / "midi").glob("*.mid"))]


@pytest.mark.slow
def test_reader_agrees_with_mido_on_thousands_of_mutants(tokenizer):
    rng = random.Random(SEED)
    seeds = _seeds()
    accepted = refused = 0
    for case in range(CASES):
        seed = rng.choice(seeds)
        mutant = mutate_messages(seed, rng) if rng.random() < 0.3 else mutate(seed, rng)
        where = f"case {case} (seed {SEED}): {mutant.hex()}"
        try:
            expected = mido_events(mido_file(mutant))
        except Exception:
            expected = None
        try:
            ours = our_events(mutant)
        except MidiFormatError as error:
            assert expected is None, f"refused what mido reads ({error.reason}); {where}"
            refused += 1
            continue
        assert expected is not None, f"accepted what mido refuses; {where}"
        assert ours == expected, f"events differ from mido's; {where}"
        accepted += 1
        with contextlib.suppress(MidiReadError):
            tokenizer.tokenize_ids(mutant)
    # Both outcomes must be common, or the mutants test only one side of the rules.
    assert accepted > CASES // 10 and refused > CASES // 10, (accepted, refused)
