from collections import Counter
from itertools import combinations, pairwise

import numpy as np
import pretty_midi
import pytest

from staria.data.labels import PieceLabels, labels_path
from staria.data.synthetic import (
    DEFAULT_FORMS,
    SynthesisConfig,
    SynthesisError,
    labelled_length,
    synthesize,
)
from staria.evaluation.notes import sectioned_notes
from staria.tokenizer import TokenTable

GENERATED = SynthesisConfig(
    pieces_per_form=4, seed=3, min_tokens=200, max_tokens=700, val_fraction=0.25
)
STITCHED_FORMS = ("AB", "ABA", "ABCB")


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("generated")
    return out_dir, synthesize(GENERATED, out_dir)


@pytest.fixture(scope="module")
def stitched(tmp_path_factory):
    from staria.paths import midi_dir

    if not midi_dir().is_dir():
        pytest.skip(f"real MIDI folder {midi_dir()} is absent (set STARIA_MIDI_DIR)")
    config = SynthesisConfig(
        pieces_per_form=3,
        forms=STITCHED_FORMS,
        source="stitched",
        source_dirs=(midi_dir(),),
        min_tokens=150,
        max_tokens=600,
        val_fraction=1 / 3,
        seed=5,
    )
    return config, synthesize(config, tmp_path_factory.mktemp("stitched"))


def _pieces(paths):
    return [(pretty_midi.PrettyMIDI(str(p)), PieceLabels.load(labels_path(p))) for p in paths]


def _onsets(midi: pretty_midi.PrettyMIDI) -> np.ndarray:
    return np.array([note.start for instrument in midi.instruments for note in instrument.notes])


def _section_notes(midi, labels, index):
    """(relative onset ms, pitch) pairs of the notes in one section, sorted."""
    notes = [n for instrument in midi.instruments for n in instrument.notes]
    section = labels.section_of_onsets(np.array([n.start for n in notes]))
    start = labels.sections[index].start
    return sorted(
        (round((n.start - start) * 1000), n.pitch)
        for n, s in zip(notes, section, strict=True)
        if s == index
    )


def test_forms_and_splits_are_balanced(generated):
    out_dir, paths = generated
    assert len(paths) == 4 * len(DEFAULT_FORMS)
    labels = [PieceLabels.load(labels_path(p)) for p in paths]
    assert Counter(label.form for label in labels) == {form: 4 for form in DEFAULT_FORMS}
    assert Counter((label.split, label.form) for label in labels) == {
        **{("train", form): 3 for form in DEFAULT_FORMS},
        **{("val", form): 1 for form in DEFAULT_FORMS},
    }
    assert all(p.parent == out_dir / PieceLabels.load(labels_path(p)).split for p in paths)
    assert Counter(label.style["genre"] for label in labels) == {"jazz": 16, "classical": 16}


def test_same_seed_writes_byte_identical_files_and_another_seed_does_not(generated, tmp_path):
    out_dir, paths = generated
    again = synthesize(GENERATED, tmp_path / "again")
    assert [p.relative_to(tmp_path / "again") for p in again] == [
        p.relative_to(out_dir) for p in paths
    ]
    for first, second in zip(paths, again, strict=True):
        assert first.read_bytes() == second.read_bytes()
        assert labels_path(first).read_bytes() == labels_path(second).read_bytes()
    other = synthesize(
        SynthesisConfig(pieces_per_form=1, forms=("ABA",), seed=4), tmp_path / "other"
    )
    assert other[0].read_bytes() != (out_dir / "train" / "ABA_00000.mid").read_bytes()


def test_labels_cover_every_note_and_tile_the_piece(generated):
    for midi, labels in _pieces(generated[1]):
        assert (labels.letters_for_onsets(_onsets(midi)) != "").all()
        assert labels.sections[0].start == 0.0
        for previous, section in pairwise(labels.sections):
            assert section.start == previous.end
        assert midi.get_end_time() <= labels.sections[-1].end + 1e-3


def test_lengths_stay_in_the_token_range(generated, tokenizer):
    lengths = [
        labelled_length(tokenizer, midi, labels.form) for midi, labels in _pieces(generated[1])
    ]
    assert min(lengths) >= GENERATED.min_tokens
    assert max(lengths) <= GENERATED.max_tokens
    assert max(lengths) - min(lengths) > (GENERATED.max_tokens - GENERATED.min_tokens) / 3


def test_token_onsets_fall_in_the_same_sections_as_midi_onsets(generated, tokenizer):
    """Tokenizer quantization must never move a note across a section boundary."""
    table = TokenTable.from_tokenizer(tokenizer)
    for midi, labels in _pieces(generated[1][:12]):
        notes = sectioned_notes(tokenizer.tokenize_ids(midi), table).notes
        from_tokens = np.bincount(
            labels.section_of_onsets(notes.start_ms / 1000), minlength=len(labels.form)
        )
        from_midi = np.bincount(labels.section_of_onsets(_onsets(midi)), minlength=len(labels.form))
        assert from_tokens.tolist() == from_midi.tolist()


def _pitch_class_profile(midi, labels, index):
    pitches = np.array([pitch for _, pitch in _section_notes(midi, labels, index)])
    histogram = np.bincount(pitches % 12, minlength=12).astype(float)
    return histogram / np.linalg.norm(histogram)


def test_repeats_reuse_their_material_and_letters_differ(generated):
    same, different = [], []
    for midi, labels in _pieces(generated[1]):
        for i, j in combinations(range(len(labels.form)), 2):
            similarity = _pitch_class_profile(midi, labels, i) @ _pitch_class_profile(
                midi, labels, j
            )
            if labels.form[i] == labels.form[j]:
                assert _section_notes(midi, labels, i) == _section_notes(midi, labels, j)
                same.append(similarity)
            else:
                different.append(similarity)
    assert np.allclose(same, 1.0)
    assert np.mean(different) < 0.8
    assert np.max(different) < 0.99


def test_repeat_jitter_changes_velocities_only(tmp_path):
    config = SynthesisConfig(pieces_per_form=1, forms=("ABA",), repeat_velocity_jitter=6)
    midi, labels = _pieces(synthesize(config, tmp_path))[0]
    assert _section_notes(midi, labels, 0) == _section_notes(midi, labels, 2)
    velocities = [
        sorted(
            (n.start - labels.sections[i].start, n.pitch, n.velocity)
            for n in midi.instruments[0].notes
        )
        for i in (0, 2)
    ]
    assert velocities[0] != velocities[1]


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="source"):
        SynthesisConfig(source="sampled")
    with pytest.raises(ValueError, match="min_tokens"):
        SynthesisConfig(min_tokens=900, max_tokens=800)
    with pytest.raises(ValueError, match="source_dirs"):
        SynthesisConfig(source="stitched")
    with pytest.raises(ValueError, match="forms"):
        SynthesisConfig(forms=("ABBA",))


def test_stitched_sources_are_disjoint_across_forms_and_splits(stitched):
    _, paths = stitched
    labels = [PieceLabels.load(labels_path(p)) for p in paths]
    assert Counter(label.form for label in labels) == {form: 3 for form in STITCHED_FORMS}
    assert {label.split for label in labels} == {"train", "val"}
    owners: dict[str, set] = {}
    for label in labels:
        assert label.source == "stitched"
        assert len(set(label.origins.values())) == len(label.origins)
        for origin in label.origins.values():
            owners.setdefault(origin, set()).add((label.split, label.form))
    assert all(len(owner) == 1 for owner in owners.values()), owners
    broken = ("ValueError_Control168.mid", "RunTimeError_unexpected_EOF.mid", "empty.mid")
    assert not any(origin.endswith(broken) for origin in owners)


def test_stitched_pieces_repeat_their_source_beginning_within_range(stitched, tokenizer):
    config, paths = stitched
    for midi, labels in _pieces(paths):
        assert (
            config.min_tokens <= labelled_length(tokenizer, midi, labels.form) <= config.max_tokens
        )
        assert (labels.letters_for_onsets(_onsets(midi)) != "").all()
        first = {}
        for index, letter in enumerate(labels.form):
            notes = _section_notes(midi, labels, index)
            assert notes[0][0] == 0, "each section starts with its source's first note"
            assert first.setdefault(letter, notes) == notes


def test_too_few_source_files_is_a_clear_error(tmp_path, shared_midi_dir):
    config = SynthesisConfig(
        pieces_per_form=2,
        source="stitched",
        source_dirs=(shared_midi_dir / "aria-example-prompts",),
        min_tokens=100,
        max_tokens=400,
    )
    with pytest.raises(SynthesisError, match="distinct usable source files"):
        synthesize(config, tmp_path)
