"""MusicTokenizerWithStyle: Aria vocabulary and reference ids, round trips, augmentation."""

import json

import numpy as np
import pretty_midi
import pytest

from staria.tokenizer.cli import roundtrip_report, write_example_midi
from staria.tokenizer.midi_io import MidiReadError
from staria.tokenizer.vocabulary import VOCAB_SIZE
from tests.aria_reference import VENDORED_FILES, VENDORED_VOCAB_SHA256, vocabulary_digest
from tests.aria_reference import folder as aria_folder
from tests.aria_reference import reference as aria_reference
from tests.midi_oracle import notes_to_pretty_midi

ARIA = aria_folder()
_reference = aria_reference()


def test_vocabulary_is_aria_then_staria(tokenizer):
    listing = ARIA / "staria_vocab.json"
    if listing.is_file():
        listed = json.loads(listing.read_text())["vocab"]
        expected = [tuple(token) if isinstance(token, list) else token for token in listed]
        assert list(tokenizer.vocab) == expected
    # the vendored subset keeps the listing's digest: checked with or without the listing
    assert vocabulary_digest(list(tokenizer.vocab)) == VENDORED_VOCAB_SHA256
    assert tokenizer.vocab_size() == 17742
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (0, 1, 2)
    assert tokenizer.encode([tokenizer.section_token("A"), tokenizer.form_token("ABA")]) == [
        17727,
        17736,
    ]
    assert tokenizer.encode([tokenizer.prompt_start, tokenizer.prompt_end]) == [17731, 17732]
    with pytest.raises(ValueError, match="'E'"):
        tokenizer.section_token("E")


def test_per_id_tables_follow_the_tokens(tokenizer):
    """`note_length`, `section_ids` and `VOCAB_SIZE` (id arithmetic) against the tokens."""
    expected = [
        (2 if token[0] == "drum" else 3)
        if isinstance(token, tuple)
        and len(token) in (2, 3)
        and token[0] not in ("prefix", "onset", "dur")
        else 0
        for token in tokenizer.vocab
    ]
    np.testing.assert_array_equal(tokenizer.note_length, expected)
    assert tokenizer.decode(list(tokenizer.section_ids.values())) == [
        "<A_SECTION>",
        "<B_SECTION>",
        "<C_SECTION>",
        "<D_SECTION>",
    ]
    assert tokenizer.vocab_size() == VOCAB_SIZE


@pytest.mark.parametrize("name", list(_reference["files"]))
def test_ids_match_aria_reference(tokenizer, name):
    expected = _reference["files"][name]
    got = tokenizer.encode(tokenizer.tokenize(ARIA / name, add_dim_tok=False))
    start, expected_start = got.index(tokenizer.bos_id), expected.index(tokenizer.bos_id)
    assert set(got[:start]) == set(expected[:expected_start])
    assert got[start:] == expected[expected_start:]


@pytest.mark.parametrize("name", list(_reference["errors"]))
def test_files_aria_refuses_raise_midi_read_error(tokenizer, name):
    with pytest.raises(MidiReadError, match=name.split("/")[-1]) as error:
        tokenizer.tokenize(ARIA / name)
    assert error.value.reason


def test_corrupt_bytes_raise_midi_read_error(tokenizer):
    with pytest.raises(MidiReadError, match="<bytes>"):
        tokenizer.tokenize(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk\xff\xff")


def _stable_round_trip(tokenizer, source):
    normalised = tokenizer.tokenize(tokenizer.detokenize(tokenizer.tokenize(source)))
    return normalised, tokenizer.tokenize(tokenizer.detokenize(normalised))


@pytest.mark.parametrize("name", VENDORED_FILES)
def test_round_trip_is_identity_after_one_pass_on_real_files(tokenizer, name):
    normalised, again = _stable_round_trip(tokenizer, ARIA / name)
    assert again == normalised


def test_round_trip_on_built_example_keeps_notes(tokenizer, tmp_path):
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(64, 60 + i, 0.5 + 0.25 * i, 1.0 + 0.25 * i) for i in range(8)]
    drums = pretty_midi.Instrument(program=0, is_drum=True)
    drums.notes = [pretty_midi.Note(100, 36, 0.5 + 0.5 * i, 0.6 + 0.5 * i) for i in range(4)]
    midi.instruments = [piano, drums]
    tokens = tokenizer.tokenize(midi)
    assert tokens[:3] == [
        ("prefix", "instrument", "piano"),
        ("prefix", "instrument", "drum"),
        "<S>",
    ]
    assert tokens[3:6] == [("piano", 60, 60), ("onset", 0), ("dur", 500)]
    back = tokenizer.detokenize(tokens)
    assert [len(i.notes) for i in back.instruments] == [8, 4]
    assert back.instruments[1].is_drum
    assert tokenizer.tokenize(back) == tokens


def test_time_tokens_mark_5_second_segments(tokenizer):
    midi = pretty_midi.PrettyMIDI()
    piano = pretty_midi.Instrument(program=0)
    piano.notes = [pretty_midi.Note(80, 60, start, start + 0.1) for start in (0.0, 4.99, 11.0)]
    midi.instruments = [piano]
    tokens = tokenizer.tokenize(midi, add_eos_tok=False)
    assert tokens[2:] == [
        ("piano", 60, 80), ("onset", 0), ("dur", 100),
        ("piano", 60, 80), ("onset", 4990), ("dur", 100),
        "<T>", "<T>", ("piano", 60, 80), ("onset", 1000), ("dur", 100),
    ]  # fmt: skip


PIANO_PIECE = "miditok-tests/6338816_Etude No. 4.mid"  # in the shared and the vendored folder


def test_dim_token_sits_about_100_tokens_before_the_end(tokenizer):
    tokens = tokenizer.tokenize(ARIA / PIANO_PIECE, add_dim_tok=True)
    assert tokens.count("<D>") == 1
    assert 100 <= len(tokens) - tokens.index("<D>") <= 104


def test_augmentations(tokenizer):
    tokens = tokenizer.tokenize(ARIA / PIANO_PIECE)
    up = tokenizer.augment_pitch(tokens, 2)
    assert up[2] == ("piano", tokens[2][1] + 2, tokens[2][2])
    far = tokenizer.augment_pitch(tokens, 60)
    assert all(t[1] <= 127 for t in far if isinstance(t, tuple) and t[0] == "piano")
    assert len(far) < len(tokens)
    louder = tokenizer.augment_velocity(tokens, 20)
    assert {t[2] for t in louder if isinstance(t, tuple) and t[0] == "piano"} == {120}
    slower = tokenizer.augment_tempo(tokens, 2.0)
    notes = tokenizer.ids_to_notes(np.asarray(tokenizer.encode(tokens)))
    stretched = tokenizer.ids_to_notes(np.asarray(tokenizer.encode(slower)))
    assert np.allclose(stretched.start_ms, notes.start_ms * 2)
    assert slower.count("<T>") >= 2 * tokens.count("<T>")


def test_roundtrip_report_lists_rows_and_skips(tmp_path):
    paths = write_example_midi(tmp_path)
    (tmp_path / "empty.mid").write_bytes((ARIA / "miditok-tests/empty.mid").read_bytes())
    rows, skipped = roundtrip_report(tmp_path)
    assert [row.file for row in rows] == [paths[0].name]
    assert rows[0].notes_in == rows[0].notes_out > 0
    assert rows[0].max_onset_error_ms <= 5.0
    assert "empty.mid" in skipped


@pytest.mark.parametrize("name", VENDORED_FILES)
def test_write_midi_tokenizes_like_the_pretty_midi_path(tokenizer, tmp_path, name):
    """The one MIDI writer against the same notes written note by note by pretty_midi."""
    tokens = tokenizer.tokenize(ARIA / name)
    tokenizer.write_midi(tokens, tmp_path / "fast.mid")
    written = pretty_midi.PrettyMIDI(str(tmp_path / "fast.mid"))
    expected = notes_to_pretty_midi(tokenizer.ids_to_notes(np.asarray(tokenizer.encode(tokens))))
    assert [(i.program, i.is_drum, len(i.notes)) for i in written.instruments] == [
        (i.program, i.is_drum, len(i.notes)) for i in expected.instruments
    ]
    assert tokenizer.tokenize(tmp_path / "fast.mid") == tokenizer.tokenize(expected)
