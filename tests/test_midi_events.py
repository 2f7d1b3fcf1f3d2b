"""The compiled MIDI reader against mido (Aria's reader), and Aria's rules on built files."""

import random

import mido
import pytest

from staria.tokenizer import MusicTokenizerWithStyle
from staria.tokenizer.midi_events import MidiFormatError, read_events
from staria.tokenizer.midi_io import MidiReadError, read_notes
from tests import aria_reference
from tests.midi_oracle import midi_file, mido_accepts, mido_events, our_events

ORACLE_FILES = [
    "aria-utils-tests/arabesque.mid",  # pedal in its own note-less track
    "miditok-tests/Funkytown.mid",  # program changes mid-track, dropped channel
    "symusic-tests/RunTimeError_unexpected_EOF.mid",
    "pretty-midi/example.mid",
]


def oracle_files() -> list[str]:
    """`ORACLE_FILES` in the shared folder; in a bare clone, every vendored file."""
    if aria_reference.is_shared():
        return ORACLE_FILES
    vendored = aria_reference.VENDORED
    return sorted(path.relative_to(vendored).as_posix() for path in vendored.rglob("*.mid"))


@pytest.mark.parametrize("name", oracle_files())
def test_events_equal_mido_on_real_files(name):
    path = aria_reference.folder() / name
    assert our_events(path.read_bytes()) == mido_events(mido.MidiFile(path))


def test_truncated_and_corrupted_bytes_accepted_exactly_whenmido_accepts():
    data = (aria_reference.folder() / "aria-utils-tests/basic.mid").read_bytes()
    rng = random.Random(0)
    variants = [data[:cut] for cut in rng.sample(range(len(data)), 40)]
    for _ in range(40):
        corrupted = bytearray(data)
        corrupted[rng.randrange(len(data))] = rng.randrange(256)
        variants.append(bytes(corrupted))
    for variant in variants:
        try:
            read_events(variant)
            accepted = True
        except MidiFormatError:
            accepted = False
        assert accepted == mido_accepts(variant)


def _note(pitch, start_delta, length, channel=0, velocity=80):
    return [
        mido.Message("note_on", note=pitch, velocity=velocity, channel=channel, time=start_delta),
        mido.Message("note_off", note=pitch, channel=channel, time=length),
    ]


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"\x00\x90\x3c\xa8", "data byte 168"),  # velocity byte out of range
        (b"\x00\x3c\x40", "without a running status"),
        (b"\x00\xff\x59\x02\x09\x00", "meta message of type 0x59"),  # key with 9 sharps
        (b"\x00\xf4", "undefined status byte 0xf4"),
    ],
)
def test_malformed_tracks_name_the_reason(body, reason):
    data = midi_file([]).replace(b"MTrk\x00\x00\x00\x04\x00\xff\x2f\x00", b"")
    data = data[:10] + b"\x00\x01" + data[12:]
    data += b"MTrk" + len(body).to_bytes(4, "big") + body
    assert not mido_accepts(data)
    with pytest.raises(MidiFormatError, match=reason):
        read_events(data)
    with pytest.raises(MidiReadError, match="<bytes>"):
        read_notes(data)


def test_pedal_in_another_track_holds_notes_and_a_pedal_left_down_ends_with_the_last_note():
    notes = _note(60, 0, 480) + _note(64, 480, 480)  # 0-480, 960-1440 ticks = 0-500, 1000-1500 ms
    pedal = [
        mido.Message("control_change", control=64, value=127, time=240),
        mido.Message("control_change", control=64, value=0, time=480),  # up at 720 ticks
        mido.Message("control_change", control=64, value=100, time=480),  # down at 1200, never up
    ]
    table = read_notes(midi_file(notes, pedal))
    assert table.duration_ms.tolist() == [750, 500]  # held to 750 ms; last note not extended
    assert table.start_ms.tolist() == pytest.approx([0.0, 1000.0])


def test_program_without_notes_still_names_its_instrument_and_dropped_channels_vanish():
    piano = _note(60, 0, 480)
    organ_only = [mido.Message("program_change", program=16, channel=1)]
    pad = [mido.Message("program_change", program=88, channel=2), *_note(62, 0, 480, channel=2)]
    tokenizer = MusicTokenizerWithStyle()
    tokens = tokenizer.tokenize(midi_file(piano, organ_only, pad))
    assert tokens[:3] == [
        ("prefix", "instrument", "piano"),
        ("prefix", "instrument", "organ"),
        "<S>",
    ]
    assert tokens[3:] == [("piano", 60, 80), ("onset", 0), ("dur", 500), "<E>"]


def test_simultaneous_notes_follow_the_order_of_their_note_offs():
    chord = [
        mido.Message("note_on", note=60, velocity=80, time=0),
        mido.Message("note_on", note=67, velocity=80, time=0),
        mido.Message("note_off", note=67, time=480),
        mido.Message("note_off", note=60, time=0),
    ]
    assert read_notes(midi_file(chord)).pitch.tolist() == [67, 60]


def test_aria_clock_mixes_the_last_two_tempos_past_the_last_change():
    tempos = [
        mido.MetaMessage("set_tempo", tempo=500_000, time=0),
        mido.MetaMessage("set_tempo", tempo=1_000_000, time=0),
    ]
    table = read_notes(midi_file(tempos, _note(60, 480, 480)))
    # Past the last change Aria first goes back to it at the tempo before (-480 ticks at 0.5 s
    # per beat), then forward at the last tempo: onset -500 + 1000 ms, duration -500 + 2000 ms.
    assert table.onset_ms.tolist() == [500]
    assert table.duration_ms.tolist() == [1500]
    assert table.start_ms.tolist() == pytest.approx([1000.0])  # the true tempo map
    tokens = MusicTokenizerWithStyle().tokenize(midi_file(tempos, _note(60, 480, 480)))
    assert tokens[2:5] == [("piano", 60, 80), ("onset", 500), ("dur", 1500)]
