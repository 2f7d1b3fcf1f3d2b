"""MIDI files -> note arrays with Aria's timing: the part of tokenization that touches MIDI.

`staria.tokenizer.midi_events` reads the bytes (compiled); everything here works on whole
arrays or in small compiled kernels, never note by note in Python. The rules are Aria's: notes
pair within a track per (channel, pitch), a program change anywhere sets the instrument of its
channel, the sustain pedal is per channel across tracks, and times come from Aria's own
tick->ms sum.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import logging
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pretty_midi
from numba import njit

from staria.tokenizer.midi_events import (
    NOTE_OFF,
    NOTE_ON,
    PEDAL,
    PROGRAM,
    MidiEvents,
    MidiFormatError,
    read_events,
    write_events,
)
from staria.tokenizer.midi_events import (
    SUSTAIN_PEDAL_CC as SUSTAIN_PEDAL_CC,  # used by MIDI writers
)

log = logging.getLogger(__name__)

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
PEDAL_DOWN = 64  # a CC64 value at or above this holds notes
DEFAULT_TEMPO_US_PER_BEAT = 500_000
# FAMILIES index of each program group, -1 for the groups Aria drops.
_GROUP_FAMILY = np.array([FAMILIES.index(f) if f else -1 for f in PROGRAM_GROUP_FAMILIES])

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

    `family` indexes `FAMILIES`; `end_ms` already includes sustain-pedal extension.
    """

    family: np.ndarray
    pitch: np.ndarray
    velocity: np.ndarray
    start_ms: np.ndarray
    end_ms: np.ndarray

    def __len__(self) -> int:
        return len(self.pitch)

    def select(self, notes: slice | np.ndarray) -> NoteTable:
        """The same table holding only `notes` (a slice, mask or indices, in start order)."""
        per_note = {f.name: getattr(self, f.name)[notes] for f in dataclasses.fields(self)}
        per_note.pop("prefix_families", None)  # a property of the piece, not of a note
        return dataclasses.replace(self, **per_note)


def source_name(midi: MidiSource) -> str:
    """How error messages name an input that may not have a path."""
    if isinstance(midi, (str, Path)):
        return str(midi)
    if isinstance(midi, bytes | bytearray | memoryview):
        return "<bytes>"
    return "<PrettyMIDI>" if isinstance(midi, pretty_midi.PrettyMIDI) else repr(midi)


@dataclass(frozen=True)
class AriaNotes(NoteTable):
    """A `NoteTable` read from MIDI, with the integer times and instruments Aria tokenizes.

    Aria sums tick spans through the tempo map in its own way (rounded per note, from the first
    note for onsets; past the last tempo change it mixes the last two tempos), so its times can
    differ from `start_ms`/`end_ms` by a few ms or more; `duration_ms` may even be negative.
    `prefix_families` also counts channels that set a program but play no note.
    """

    onset_ms: np.ndarray
    duration_ms: np.ndarray
    prefix_families: np.ndarray


MAX_FILE_BYTES = 64 * 2**20  # real MIDI files stay below a few MB; reading costs ~60x in memory


def midi_bytes(midi: MidiSource) -> bytes:
    """The file bytes of a path, bytes (or bytearray, memoryview) or PrettyMIDI input;
    `MidiReadError` for a path that is not a readable regular file, or one larger than
    `MAX_FILE_BYTES` (checked before reading)."""
    if isinstance(midi, bytes | bytearray | memoryview):
        data = bytes(midi)
    elif isinstance(midi, pretty_midi.PrettyMIDI):
        buffer = io.BytesIO()
        midi.write(buffer)
        data = buffer.getvalue()
    else:
        try:
            path = Path(midi)
            if not path.is_file():  # a folder, a device (/dev/zero), a FIFO: nothing to read
                raise MidiReadError(str(midi), "not a regular file")
            size = path.stat().st_size
            if size > MAX_FILE_BYTES:
                raise MidiReadError(
                    str(midi), f"{size} bytes, over {MAX_FILE_BYTES} for a MIDI file"
                )
            data = path.read_bytes()
        except OSError as error:
            raise MidiReadError(str(midi), f"cannot read file ({error.strerror})") from error
        except (ValueError, TypeError) as error:  # a NUL byte in the path, not a path at all
            raise MidiReadError(str(midi), f"not a file path ({error})") from error
    if len(data) > MAX_FILE_BYTES:
        raise MidiReadError(source_name(midi), f"{len(data)} bytes, over {MAX_FILE_BYTES}")
    return data


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


@njit(cache=True)
def _pair_notes(tick, track, kind, channel, key, value):
    """Aria's note pairing: rows (pitch, channel, start, end, velocity) in note-off order.

    Within one track, a note-off closes every open note of its (channel, pitch) that started
    at an earlier tick; notes started at the very tick stay open only if older ones closed.
    Ticks never decrease within a track, so those same-tick notes are the tail of the slot's
    list: a note-off walks only the notes it closes, and pairing is linear in the events.
    """
    head = np.full(16 * 128, -1, dtype=np.int64)
    tail = np.full(16 * 128, -1, dtype=np.int64)
    after = np.full(len(tick), -1, dtype=np.int64)
    notes = np.empty((len(tick), 5), dtype=np.int64)
    count = 0
    current_track = -1
    for i in range(len(tick)):
        if kind[i] != NOTE_ON and kind[i] != NOTE_OFF:
            continue
        if track[i] != current_track:
            head[:] = -1
            current_track = track[i]
        slot = channel[i] * 128 + key[i]
        if kind[i] == NOTE_ON:
            after[i] = -1
            if head[slot] < 0:
                head[slot] = i
            else:
                after[tail[slot]] = i
            tail[slot] = i
        elif head[slot] >= 0:
            j = head[slot]
            while j >= 0 and tick[j] != tick[i]:
                notes[count, 0] = key[i]
                notes[count, 1] = channel[i]
                notes[count, 2] = tick[j]
                notes[count, 3] = tick[i]
                notes[count, 4] = value[j]
                count += 1
                j = after[j]
            closed = j != head[slot]
            head[slot] = j if closed else -1
    return notes[:count]


@njit(cache=True)
def _pedal_intervals(pedal_tick, pedal_channel, pedal_down, final_tick, starts, ends, fill):
    """Write each channel's pedal intervals at `fill[channel]` onwards, in tick order.

    Per channel an interval opens at the first down while up and closes at the next up; one
    still open at the end closes at `final_tick`. Returns the intervals per channel; with
    zero-length buffers it only counts.
    """
    count = np.zeros(16, dtype=np.int64)
    open_at = np.full(16, -1, dtype=np.int64)
    for i in range(len(pedal_tick)):
        c = pedal_channel[i]
        if pedal_down[i] and open_at[c] < 0:
            open_at[c] = pedal_tick[i]
        elif not pedal_down[i] and open_at[c] >= 0:
            if len(starts):
                starts[fill[c] + count[c]] = open_at[c]
                ends[fill[c] + count[c]] = pedal_tick[i]
            count[c] += 1
            open_at[c] = -1
    for c in range(16):
        if open_at[c] >= 0:
            if len(starts):
                starts[fill[c] + count[c]] = open_at[c]
                ends[fill[c] + count[c]] = final_tick
            count[c] += 1
    return count


@njit(cache=True)
def _sustained_ends(channel, end, pedal_tick, pedal_channel, pedal_down, final_tick):
    """Note ends moved to the pedal release when released strictly inside a pedal interval.

    Intervals are kept per channel in one flat array (memory linear in pedal events); drum
    channel notes are never held.
    """
    none = np.empty(0, dtype=np.int64)
    count = _pedal_intervals(
        pedal_tick, pedal_channel, pedal_down, final_tick, none, none, np.zeros(16, np.int64)
    )
    offset = np.zeros(17, dtype=np.int64)
    offset[1:] = np.cumsum(count)
    starts = np.empty(offset[16], dtype=np.int64)
    ends = np.empty(offset[16], dtype=np.int64)
    _pedal_intervals(pedal_tick, pedal_channel, pedal_down, final_tick, starts, ends, offset)
    held = end.copy()
    for i in range(len(end)):
        c = channel[i]
        if c == DRUM_CHANNEL or count[c] == 0:
            continue
        # Intervals are disjoint and in order: only the last one starting before the end can hold.
        k = offset[c] + np.searchsorted(starts[offset[c] : offset[c + 1]], end[i]) - 1
        if k >= offset[c] and end[i] < ends[k]:
            held[i] = ends[k]
    return held


MS_BOUND = float(2**53)  # ms, 285,000 years: far past any limit, exact in float64 and int64


@njit(cache=True)
def _to_ms(seconds):
    """Aria's rounding to integer ms, clamped to +-MS_BOUND so a huge time never wraps."""
    return np.int64(np.rint(min(max(seconds * 1e3, -MS_BOUND), MS_BOUND)))


@njit(cache=True)
def _aria_onsets_ms(first_start, start, tempo_tick, tempo, ticks_per_beat):
    """Aria's rounded ms from `first_start` to each of `start`, bit for bit, in linear time.

    Aria sums tick spans segment by segment, starting at the tempo change before the one at or
    after `first_start` (the second-to-last when it is past them all, so spans past the last
    change mix in the tempo before it). All spans share that start, so the running sum of
    whole segments is one prefix array, accumulated in Aria's order: the same floats.
    """
    last = len(tempo_tick) - 1
    first = min(np.searchsorted(tempo_tick, first_start), last)
    first = first - 1 if first > 0 else 0
    scale = tempo * 1e-6 / ticks_per_beat
    prefix = np.zeros(last + 1, dtype=np.float64)
    now = first_start
    for k in range(first, last):
        prefix[k + 1] = prefix[k] + (tempo_tick[k + 1] - now) * scale[k]
        now = tempo_tick[k + 1]
    out = np.empty(len(start), dtype=np.int64)
    for i in range(len(start)):
        e = start[i]
        segment = max(first, min(last, np.searchsorted(tempo_tick, e, side="right") - 1))
        segment_start = first_start if segment == first else tempo_tick[segment]
        seconds = prefix[segment]
        if segment < last or e > tempo_tick[last]:
            seconds += (e - segment_start) * scale[segment]
        out[i] = _to_ms(seconds)
    return out


EXACT_SPAN_SEGMENTS = 64  # tempo segments a note's duration is summed over one by one, as Aria does


@njit(cache=True)
def _aria_spans_ms(start, end, tempo_tick, tempo, ticks_per_beat):
    """Aria's rounded ms between tick pairs, with its float arithmetic and its tempo quirk.

    The sum starts at the tempo change before the one at or after `start`. The first
    `EXACT_SPAN_SEGMENTS` segments are summed one by one as Aria does; a span crossing more
    (only built files have such) takes the rest from a prefix sum, which keeps the cost linear
    whatever the tempo map and may differ from Aria's float rounding in the last bit.
    """
    last = len(tempo_tick) - 1
    scale = tempo * 1e-6 / ticks_per_beat
    whole = np.zeros(last + 1, dtype=np.float64)  # seconds from tempo_tick[0] to tempo_tick[k]
    for k in range(last):
        whole[k + 1] = whole[k] + (tempo_tick[k + 1] - tempo_tick[k]) * scale[k]
    out = np.empty(len(start), dtype=np.int64)
    for i in range(len(start)):
        s, e = start[i], end[i]
        first = min(np.searchsorted(tempo_tick, s), last)
        first = first - 1 if first > 0 else 0
        seconds = 0.0
        now = s
        k = first
        while k < last and k < first + EXACT_SPAN_SEGMENTS and e >= tempo_tick[k + 1]:
            seconds += (tempo_tick[k + 1] - now) * scale[k]
            now = tempo_tick[k + 1]
            k += 1
        if k < last and e >= tempo_tick[k + 1]:
            segment = min(last, np.searchsorted(tempo_tick, e, side="right") - 1)
            seconds += whole[segment] - whole[k]
            now = tempo_tick[segment]
            k = segment
        if k < last or e > tempo_tick[last]:
            seconds += (e - now) * scale[k]
        out[i] = _to_ms(seconds)
    return out


@dataclass(frozen=True)
class _Controls:
    """Program-change or pedal events, ordered as Aria processes them."""

    tick: np.ndarray
    channel: np.ndarray
    key: np.ndarray
    value: np.ndarray


def _by_tick(events: MidiEvents, mask: np.ndarray) -> _Controls:
    """The masked events in Aria's order: by tick, ties in file order (track, then position)."""
    order = np.flatnonzero(mask)
    order = order[np.argsort(events.tick[order], kind="stable")]
    return _Controls(
        events.tick[order], events.channel[order], events.key[order], events.value[order]
    )


def read_notes(midi: MidiSource) -> AriaNotes:
    """Parse MIDI into `AriaNotes`; `MidiReadError` if unreadable or without kept notes, or if
    reading it needs more memory than there is (about 60 bytes per byte of file at worst)."""
    name = source_name(midi)
    data = midi_bytes(midi)
    try:
        return _read_notes(data, name)
    except MemoryError as error:
        raise MidiReadError(name, f"out of memory reading {len(data)} bytes") from error


def _read_notes(data: bytes, name: str) -> AriaNotes:
    try:
        events = read_events(data)
    except MidiFormatError as error:
        raise MidiReadError(name, error.reason) from error
    notes = _pair_notes(
        events.tick, events.track, events.kind, events.channel, events.key, events.value
    )
    programs = _by_tick(events, events.kind == PROGRAM)
    program_channel, program_family = programs.channel, _GROUP_FAMILY[programs.key // 8]
    # A channel that ever selects a dropped program loses all its notes (not the drum channel).
    dropped = np.zeros(16, dtype=bool)
    dropped[program_channel[(program_family < 0) & (program_channel != DRUM_CHANNEL)]] = True
    notes = notes[~dropped[notes[:, 1]]]
    if len(notes) == 0:
        raise MidiReadError(name, "no notes on any kept instrument")
    notes = notes[np.argsort(notes[:, 2], kind="stable")]
    pitch, note_channel, start, end, velocity = notes.T
    # The last program change of a channel sets its instrument; channels without one are piano.
    kept = ~dropped[program_channel] & (program_channel != DRUM_CHANNEL)
    channel_family = np.full(16, FAMILIES.index("piano"))
    channel_family[program_channel[kept]] = program_family[kept]  # repeated index: last wins
    channel_family[DRUM_CHANNEL] = DRUM_FAMILY_INDEX
    family = channel_family[note_channel]
    prefix_families = np.union1d(family, channel_family[program_channel[kept]])
    if len(program_channel) == 0:  # Aria gives a file without program changes piano on channel 0
        prefix_families = np.union1d(prefix_families, [FAMILIES.index("piano")])
    pedals = _by_tick(events, (events.kind == PEDAL) & ~dropped[events.channel])
    end = _sustained_ends(
        note_channel, end, pedals.tick, pedals.channel, pedals.value >= PEDAL_DOWN, end[-1]
    )
    tempo_order = np.argsort(events.tempo_tick, kind="stable")
    tempo_tick, tempo = events.tempo_tick[tempo_order], events.tempo[tempo_order]
    if len(tempo) == 0:
        tempo_tick, tempo = np.zeros(1, np.int64), np.full(1, DEFAULT_TEMPO_US_PER_BEAT)
    tpq = events.ticks_per_beat
    return AriaNotes(
        family=family,
        pitch=pitch,
        velocity=velocity,
        start_ms=ticks_to_ms(start, tempo_tick, tempo, tpq),
        end_ms=ticks_to_ms(end, tempo_tick, tempo, tpq),
        onset_ms=_aria_onsets_ms(start[0], start, tempo_tick, tempo, tpq),
        duration_ms=_aria_spans_ms(start, end, tempo_tick, tempo, tpq),
        prefix_families=prefix_families,
    )


WRITE_TICKS_PER_BEAT = 500  # with 120 bpm, one tick per ms: token times survive exactly
WRITE_TEMPO_US = 500_000


def write_channels(families: np.ndarray) -> np.ndarray:
    """MIDI channel of each family written, in order: drums on 9, others on 0, 1, ... skipping 9."""
    pitched = np.cumsum(families != DRUM_FAMILY_INDEX) - 1
    return np.where(families == DRUM_FAMILY_INDEX, DRUM_CHANNEL, pitched + (pitched >= 9))


def notes_to_midi_bytes(notes: NoteTable) -> bytes:
    """A MIDI file of `notes`: one track per family, one channel each, 1 ms per tick.

    Holds the same notes, in the same event order, as pretty_midi writes them from the same
    notes (tested against that reference, `tests/midi_oracle.py`), without building Python
    objects per note.
    """
    start = np.rint(notes.start_ms).astype(np.int64)
    end = np.rint(notes.end_ms).astype(np.int64)
    families = np.unique(notes.family)
    tracks = []
    for family, channel in zip(families, write_channels(families), strict=True):
        mine = notes.family == family
        count = int(mine.sum())
        tick = np.concatenate([[0], start[mine], end[mine]])
        # Sort rank at equal ticks: program change 0, note-off 1, note-on 2.
        rank = np.concatenate([[0], np.full(count, 2), np.ones(count, np.int64)])
        is_drum = family == DRUM_FAMILY_INDEX
        program = 0 if is_drum else PROGRAM_GROUP_FAMILIES.index(FAMILIES[family]) * 8
        status = np.concatenate([[0xC0 | channel], np.full(2 * count, 0x90 | channel)])
        status[1 + count :] = 0x80 | channel
        data1 = np.concatenate([[program], notes.pitch[mine], notes.pitch[mine]])
        data2 = np.concatenate([[0], notes.velocity[mine], np.zeros(count, np.int64)])
        # pretty_midi's event order: by tick, then program, note-offs, note-ons, each by pitch
        # (note-ons then by velocity); ties keep note order. Aria's note order depends on it.
        order = np.lexsort((data2, data1, rank, tick))
        tracks.append((tick[order], status[order], data1[order], data2[order]))
    return write_events(WRITE_TICKS_PER_BEAT, WRITE_TEMPO_US, tracks)


MIDI_SUFFIXES = (".mid", ".midi")
# A stat error that means nothing is there to read (pathlib's own set): skipped silently.
_ABSENT = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)


def scan_midi_files(sources: Sequence[str | Path], limit: int = 0) -> list[Path]:
    """Sorted MIDI files under the given folders (or the files themselves); first `limit` if > 0.

    A folder that cannot be listed (permissions, a path too long) is logged and skipped; a
    source that is neither a file nor a folder is a `FileNotFoundError` naming it.
    """
    files: set[Path] = set()
    for source in map(Path, sources):
        if source.is_file():
            files.add(source.resolve())
        elif source.is_dir():
            seen: set[tuple[int, int]] = set()  # folders by (device, inode): links loop
            for folder, subfolders, names in os.walk(source, onerror=_unlisted, followlinks=True):
                try:
                    status = os.stat(folder)
                except OSError as error:
                    _unlisted(error)
                    subfolders.clear()
                    continue
                identity = (status.st_dev, status.st_ino)
                if identity in seen:
                    subfolders.clear()
                    continue
                seen.add(identity)
                real_folder = os.path.realpath(folder)
                for name in names:
                    if _suffix(name).lower() not in MIDI_SUFFIXES:
                        continue
                    path = os.path.join(real_folder, name)
                    try:
                        is_file = stat.S_ISREG(os.stat(path).st_mode)
                    except OSError as error:  # gone or a broken link: skipped; else logged
                        if error.errno not in _ABSENT:
                            _unlisted(error)
                        continue
                    if is_file:
                        # a link resolves to its target, so two names of one file are one
                        real = os.path.realpath(path) if os.path.islink(path) else path
                        files.add(Path(real))
        else:
            raise FileNotFoundError(f"MIDI source {source} is neither a file nor a folder")
    ordered = sorted(files, key=lambda path: path.parts)  # Path's order, without its __lt__
    return ordered[:limit] if limit > 0 else ordered


def _suffix(name: str) -> str:
    """A file name's suffix as `pathlib` gives it (`..mid` has `.mid`, `.mid` has none)."""
    dot = name.rfind(".")
    return name[dot:] if 0 < dot < len(name) - 1 else ""


def _unlisted(error: OSError) -> None:
    log.warning("skipping %s: %s", error.filename, error.strerror)
