"""Standard MIDI File bytes -> flat event arrays, compiled with numba.

The reader accepts and refuses what mido (the reader behind Aria's tokenizer) does, payload
checks of meta and sysex events included, and keeps what Aria's tokenization depends on that
compiled libraries such as symusic drop: every track (also those without notes), each event's
channel, and each event's position in its track. Only the events Aria uses are kept: notes,
sustain pedal, program changes, tempo.

Ticks follow mido's clock, quirks included: the delta time of a meta event of a type mido does
not know (0x08, 0x60, ...) is dropped, as mido drops it, so Aria's note times come out.

It is stricter than mido in two documented ways, both files mido reads but Aria cannot use:
a variable-length quantity longer than 4 bytes (the SMF limit; mido reads any length, and a
9-byte delta time makes Aria allocate hundreds of TiB), and an SMPTE or zero time division.
Every length read from the bytes is checked against the bytes that remain before it is used,
so whatever the input, `read_events` returns or raises `MidiFormatError` in time and memory
linear in the file's size.
"""

from __future__ import annotations

import logging
import math
import struct
from dataclasses import dataclass

import numpy as np
from numba import njit
from numba.core import event

log = logging.getLogger(__name__)


class FirstCompileNotice(event.Listener):
    """Say once per process that numba is compiling the MIDI reader: the first use after
    installing takes several CPU-seconds; numba caches the machine code beside the source
    (`NUMBA_CACHE_DIR` when set; for a read-only install, the user's `~/.cache/numba`), so
    later processes load it instead and this never shows."""

    def __init__(self) -> None:
        self.shown = False

    def on_start(self, event_: event.Event) -> None:
        if not self.shown:
            self.shown = True
            log.warning(
                "compiling the MIDI reader with numba (first use after installing: about 10 "
                "CPU-seconds, once; cached for later processes)"
            )

    def on_end(self, event_: event.Event) -> None:
        pass


event.register("numba:compile", FirstCompileNotice())

NOTE_ON, NOTE_OFF, PEDAL, PROGRAM = 0, 1, 2, 3  # `MidiEvents.kind`
SUSTAIN_PEDAL_CC = 64
TEMPO_META = 0x51
MAX_MESSAGE_LENGTH = 1_000_000  # mido refuses longer meta and sysex messages
MAX_VLQ_BYTES = 4  # the SMF limit: values up to 2**28 - 1
MAX_VLQ_VALUE = (1 << (7 * MAX_VLQ_BYTES)) - 1

# Error codes the compiled reader returns; `read_events` turns them into messages.
OK, EOF, NO_HEADER, NO_TRACK_HEADER, NO_RUNNING_STATUS = 0, 1, 2, 3, 4
UNDEFINED_STATUS, DATA_BYTE, TOO_LONG, BAD_META, TRACK_OVERRUN, BAD_DIVISION = 5, 6, 7, 8, 9, 10
LONG_QUANTITY, SYSEX_DATA_BYTE = 11, 12
REASONS = {
    EOF: "file ends inside {where}",
    NO_HEADER: "no MThd header: not a MIDI file",
    NO_TRACK_HEADER: "no MTrk header at the start of {where}",
    NO_RUNNING_STATUS: "data byte without a running status in {where}",
    UNDEFINED_STATUS: "undefined status byte 0x{value:02x} in {where}",
    DATA_BYTE: "data byte {value} out of range 0..127 in {where}",
    TOO_LONG: "message of {value} bytes exceeds 1000000 in {where}",
    BAD_META: "malformed meta message of type 0x{value:02x} in {where}",
    TRACK_OVERRUN: "{where} runs past its declared length",
    BAD_DIVISION: "unsupported time division {value} (SMPTE or zero)",
    LONG_QUANTITY: f"variable-length quantity longer than {MAX_VLQ_BYTES} bytes in {{where}}",
    SYSEX_DATA_BYTE: "sysex data byte {value} out of range 0..127 in {where}",
}

# Meta types mido decodes; it builds every other one with time 0, dropping its delta time.
_MIDO_META_TYPES = np.zeros(256, dtype=np.bool_)
_MIDO_META_TYPES[[0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x09]] = True
_MIDO_META_TYPES[[0x20, 0x21, 0x2F, 0x51, 0x54, 0x58, 0x59, 0x7F]] = True

# mido decodes a time signature's denominator as 2**byte and refuses it unless
# math.log(denominator, 2) is an integer in floating point, which fails for 51 of 256 bytes.
_DENOMINATOR_EXPONENT_OK = np.array(
    [math.log(2**exponent, 2) == int(math.log(2**exponent, 2)) for exponent in range(256)]
)

# Bytes of a channel or system message including its status byte, by status; 0 = undefined.
_MESSAGE_LENGTH = np.zeros(256, dtype=np.int64)
_MESSAGE_LENGTH[0x80:0xF0] = 3
_MESSAGE_LENGTH[0xC0:0xE0] = 2
_MESSAGE_LENGTH[[0xF1, 0xF3]] = 2
_MESSAGE_LENGTH[0xF2] = 3
_MESSAGE_LENGTH[[0xF6, 0xF8, 0xFA, 0xFB, 0xFC, 0xFE]] = 1


class MidiFormatError(Exception):
    """Bytes that are not a MIDI file mido would read; `reason` says what is wrong and where."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class MidiEvents:
    """The events Aria uses, in file order (track by track, in track order); ticks absolute.

    `kind` is NOTE_ON (velocity > 0), NOTE_OFF (note-off or note-on with velocity 0), PEDAL
    (CC64, `value` = pedal value) or PROGRAM (`key` = program); for notes `key` is the pitch
    and `value` the velocity. Tempo events (µs per beat) keep file order too.
    """

    ticks_per_beat: int
    tick: np.ndarray
    track: np.ndarray
    kind: np.ndarray
    channel: np.ndarray
    key: np.ndarray
    value: np.ndarray
    tempo_tick: np.ndarray
    tempo: np.ndarray


@njit(cache=True)
def _read_vlq(data, pos):
    """(error, value, next position): error is OK, EOF if the file ends inside the number, or
    LONG_QUANTITY past `MAX_VLQ_BYTES` bytes, so the value always fits in 28 bits."""
    value = np.int64(0)
    for _ in range(MAX_VLQ_BYTES):
        if pos >= len(data):
            return EOF, 0, pos
        byte = np.int64(data[pos])
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return OK, value, pos
    return LONG_QUANTITY, 0, pos


@njit(cache=True)
def _read_body_length(data, pos):
    """(error, length, body start) of a meta or sysex body whose VLQ length is at `pos`; error is
    OK, EOF if the body runs past the file, LONG_QUANTITY, or TOO_LONG (with the length) past
    mido's limit."""
    error, length, pos = _read_vlq(data, pos)
    if error != OK:
        return error, 0, pos
    if length > MAX_MESSAGE_LENGTH:
        return TOO_LONG, length, pos
    if pos + length > len(data):
        return EOF, 0, pos
    return OK, length, pos


@njit(cache=True)
def _meta_is_valid(meta_type, data, start, length):
    """Whether mido can decode this meta message (it refuses short or out-of-range data)."""
    if meta_type == 0x00:
        return length != 1
    if meta_type == 0x20:
        return length >= 1
    if meta_type == 0x51:
        return length >= 3
    if meta_type == 0x54:
        if length < 5:
            return False
        return (
            data[start] >> 5 <= 3
            and data[start + 1] <= 59
            and data[start + 2] <= 59
            and data[start + 4] <= 99
        )
    if meta_type == 0x58:
        return length >= 4 and _DENOMINATOR_EXPONENT_OK[data[start + 1]]
    if meta_type == 0x59:
        if length < 2:
            return False
        key = np.int64(data[start])
        key = key - 256 if key > 127 else key
        return -7 <= key <= 7 and data[start + 1] <= 1
    return True


@njit(cache=True)
def _sysex_data_error(data, start, length):
    """The first byte above 127 in a sysex body, without its leading F0 and trailing F7 (mido
    strips those, then refuses any other byte above 127), or -1."""
    end = start + length
    if length > 0 and data[start] == 0xF0:
        start += 1
    if end > start and data[end - 1] == 0xF7:
        end -= 1
    for i in range(start, end):
        if data[i] > 127:
            return np.int64(data[i])
    return -1


@njit(cache=True)
def _u32(data, pos):
    return (
        (np.int64(data[pos]) << 24)
        | (np.int64(data[pos + 1]) << 16)
        | (np.int64(data[pos + 2]) << 8)
        | np.int64(data[pos + 3])
    )


@njit(cache=True)
def _is_tag(data, pos, tag):
    return np.all(data[pos : pos + 4] == tag)


@njit(cache=True)
def _read(data, message_length, events, tempos, counters):
    """Fill `events` (tick, track, kind, channel, key, value rows) and `tempos` (tick, tempo).

    Returns (error, error value, track or -1, ticks per beat); `counters` gets the number of
    events and tempos. Every read is bounds-checked, so a truncated file yields EOF.
    """
    n = len(data)
    if n < 8:
        return EOF, 0, -1, 0
    if not _is_tag(data, 0, np.array([77, 84, 104, 100])):  # MThd
        return NO_HEADER, 0, -1, 0
    size = _u32(data, 4)
    if min(size, n - 8) < 6:
        return EOF, 0, -1, 0
    num_tracks = (np.int64(data[10]) << 8) | np.int64(data[11])
    num_tracks = num_tracks - 65536 if num_tracks > 32767 else num_tracks  # signed, like mido
    division = (np.int64(data[12]) << 8) | np.int64(data[13])
    if division == 0 or division > 32767:
        return BAD_DIVISION, division, -1, division
    track_tag = np.array([77, 84, 114, 107])  # MTrk
    count = 0
    tempo_count = 0
    pos = min(8 + size, n)
    for track in range(num_tracks):
        counters[0], counters[1] = count, tempo_count
        if pos + 8 > n:
            return EOF, 0, track, division
        if not _is_tag(data, pos, track_tag):
            return NO_TRACK_HEADER, 0, track, division
        end = pos + 8 + _u32(data, pos + 4)
        pos += 8
        now = np.int64(0)
        last_status = np.int64(-1)
        while pos != end:
            if pos > end:
                return TRACK_OVERRUN, 0, track, division
            error, delta, pos = _read_vlq(data, pos)
            if error != OK:
                return error, 0, track, division
            if pos >= n:
                return EOF, 0, track, division
            now += delta
            status = np.int64(data[pos])
            pos += 1
            peek = np.int64(-1)
            if status < 0x80:
                if last_status < 0:
                    return NO_RUNNING_STATUS, 0, track, division
                peek = status
                status = last_status
            elif status != 0xFF:
                last_status = status
            if status == 0xFF:
                if pos >= n:
                    return EOF, 0, track, division
                meta_type = np.int64(data[pos])
                error, length, pos = _read_body_length(data, pos + 1)
                if error != OK:
                    return error, length, track, division
                if not _meta_is_valid(meta_type, data, pos, length):
                    return BAD_META, meta_type, track, division
                if not _MIDO_META_TYPES[meta_type]:
                    now -= delta  # mido builds unknown meta events with time 0: Aria's clock
                if meta_type == TEMPO_META:
                    tempos[tempo_count, 0] = now
                    tempos[tempo_count, 1] = (
                        (np.int64(data[pos]) << 16)
                        | (np.int64(data[pos + 1]) << 8)
                        | np.int64(data[pos + 2])
                    )
                    tempo_count += 1
                pos += length
            elif status == 0xF0 or status == 0xF7:
                # A running-status data byte before sysex is dropped, as mido does.
                error, length, pos = _read_body_length(data, pos)
                if error != OK:
                    return error, length, track, division
                bad_byte = _sysex_data_error(data, pos, length)
                if bad_byte >= 0:
                    return SYSEX_DATA_BYTE, bad_byte, track, division
                pos += length
            else:
                length = message_length[status]
                to_read = length - 1 - (1 if peek >= 0 else 0)
                if length == 0 or to_read < 0:
                    return UNDEFINED_STATUS, status, track, division
                if pos + to_read > n:
                    return EOF, 0, track, division
                if peek > 127:
                    return DATA_BYTE, peek, track, division
                for i in range(pos, pos + to_read):
                    if data[i] > 127:
                        return DATA_BYTE, np.int64(data[i]), track, division
                first = peek if peek >= 0 else (np.int64(data[pos]) if to_read > 0 else 0)
                second = np.int64(data[pos + to_read - 1]) if length == 3 else 0
                pos += to_read
                high = status & 0xF0
                event = -1
                if high == 0x90:
                    event = NOTE_ON if second > 0 else NOTE_OFF
                elif high == 0x80:
                    event = NOTE_OFF
                elif high == 0xB0 and first == SUSTAIN_PEDAL_CC:
                    event = PEDAL
                elif high == 0xC0:
                    event = PROGRAM
                if event >= 0 and status < 0xF0:
                    events[count, 0] = now
                    events[count, 1] = track
                    events[count, 2] = event
                    events[count, 3] = status & 0x0F
                    events[count, 4] = first
                    events[count, 5] = second
                    count += 1
    counters[0], counters[1] = count, tempo_count
    return OK, 0, -1, division


def read_events(data: bytes) -> MidiEvents:
    """All Aria-relevant events of a MIDI file; `MidiFormatError` where mido would refuse it."""
    buffer = np.frombuffer(data, dtype=np.uint8)
    # Each kept event takes at least 2 bytes (delta, data byte), each tempo at least 7.
    events = np.empty((len(buffer) // 2 + 1, 6), dtype=np.int64)
    tempos = np.empty((len(buffer) // 7 + 1, 2), dtype=np.int64)
    counters = np.zeros(2, dtype=np.int64)
    error, error_value, error_track, division = _read(
        buffer, _MESSAGE_LENGTH, events, tempos, counters
    )
    if error != OK:
        where = "the header" if error_track < 0 else f"track {error_track}"
        raise MidiFormatError(REASONS[error].format(where=where, value=error_value))
    events, tempos = events[: counters[0]], tempos[: counters[1]]
    return MidiEvents(int(division), *events.T, *tempos.T)


_FILLER = np.array([0xFF, 0x01, 0x00], dtype=np.uint8)  # an empty text meta event


@njit(cache=True)
def _track_body(tick, status, data1, data2, message_length):
    """MTrk payload: each event as VLQ delta + message (no running status), then end of track.

    A delta above `MAX_VLQ_VALUE` is split: empty text meta events carry the excess, so every
    quantity fits in `MAX_VLQ_BYTES` bytes and readers see the same absolute ticks.
    """
    fillers = 0
    previous = 0
    for i in range(len(tick)):
        fillers += max(tick[i] - previous - 1, 0) // MAX_VLQ_VALUE
        previous = tick[i]
    out = np.empty(len(tick) * 8 + fillers * 7 + 4, dtype=np.uint8)
    pos = 0
    previous = 0
    for i in range(len(tick)):
        delta = tick[i] - previous
        previous = tick[i]
        while delta > MAX_VLQ_VALUE:
            out[pos : pos + 4] = 0xFF
            out[pos + 3] = 0x7F
            out[pos + 4 : pos + 7] = _FILLER
            pos += 7
            delta -= MAX_VLQ_VALUE
        shift = 7 * (MAX_VLQ_BYTES - 1)
        while shift > 0 and delta >> shift == 0:
            shift -= 7
        while shift > 0:
            out[pos] = 0x80 | ((delta >> shift) & 0x7F)
            pos += 1
            shift -= 7
        out[pos] = delta & 0x7F
        out[pos + 1] = status[i]
        out[pos + 2] = data1[i]
        out[pos + 3] = data2[i]
        pos += 1 + message_length[status[i]]
    out[pos : pos + 4] = np.array([0, 0xFF, 0x2F, 0], dtype=np.uint8)
    return out[: pos + 4]


def write_events(ticks_per_beat: int, tempo_us: int, tracks: list[tuple[np.ndarray, ...]]) -> bytes:
    """A type-1 MIDI file: a tempo track, then one track per (tick, status, data1, data2) tuple.

    Ticks must be non-negative and sorted within a track (any size: long gaps are split),
    statuses channel messages (0x80..0xEF), data bytes 0..127; `ValueError` names what does
    not fit its field, so nothing is written that a reader would decode differently.
    """
    if not 0 < ticks_per_beat <= 0x7FFF or not 0 <= tempo_us <= 0xFFFFFF:
        raise ValueError(f"ticks_per_beat {ticks_per_beat} or tempo {tempo_us} µs does not fit")
    tempo = tempo_us.to_bytes(3, "big")
    chunks = [b"\x00\xff\x51\x03" + tempo + b"\x00\xff\x2f\x00"]
    for number, (tick, status, data1, data2) in enumerate(tracks, start=1):
        tick, status = np.asarray(tick, np.int64), np.asarray(status, np.int64)
        data1, data2 = np.asarray(data1, np.int64), np.asarray(data2, np.int64)
        if len(tick) and (tick[0] < 0 or np.any(np.diff(tick) < 0)):
            raise ValueError(f"track {number}: ticks must be non-negative and sorted")
        if np.any((status < 0x80) | (status > 0xEF)):
            raise ValueError(f"track {number}: a status outside the channel messages 0x80..0xEF")
        for name, values in (("data1", data1), ("data2", data2)):
            if np.any((values < 0) | (values > 127)):
                raise ValueError(f"track {number}: a {name} byte outside 0..127")
        body = _track_body(
            tick,
            status.astype(np.uint8),
            data1.astype(np.uint8),
            data2.astype(np.uint8),
            _MESSAGE_LENGTH,
        )
        chunks.append(body.tobytes())
    if len(chunks) > 0x7FFF:
        raise ValueError(f"{len(chunks)} tracks do not fit a MIDI header")
    header = b"MThd" + (6).to_bytes(4, "big") + struct.pack(">hhh", 1, len(chunks), ticks_per_beat)
    return header + b"".join(b"MTrk" + len(c).to_bytes(4, "big") + c for c in chunks)
