"""Structure metrics on hand-built token sequences whose values can be worked out on paper."""

from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from staria.evaluation.notes import sectioned_notes
from staria.evaluation.samples import GeneratedSample
from staria.evaluation.structure_metrics import (
    MEANINGS,
    StructureMetrics,
    chance_metrics,
    jensen_shannon_distance,
    metric_intervals,
    reference_metrics,
    section_similarities,
    structure_metrics,
    texture,
)
from staria.statistics import mean_interval, paired_mean_interval, wilson_interval
from staria.tokenizer import SEGMENT_MS, TokenKind, TokenTable
from staria.tokenizer.midi_io import NoteTable, read_notes
from tests import aria_reference
from tests.evaluation.midi_files import write_midi

# Three rising notes, 500 ms apart (A), and a repeated D at the same pace (B).
A_NOTES = [(60, 0, 500), (64, 500, 500), (67, 1000, 500)]
B_NOTES = [(62, 0, 500), (62, 500, 500), (62, 1000, 500)]


@pytest.fixture(scope="module")
def table(tokenizer) -> TokenTable:
    return TokenTable.from_tokenizer(tokenizer)


def sequence_ids(tokenizer, sections, form=None, eos=True) -> list[int]:
    """Decoder ids for `sections` = [(letter, [(pitch, onset_ms, dur_ms), ...]), ...]; onsets are
    relative to their section, which starts 500 ms after the previous section's last note ends."""
    tokens = [("prefix", "instrument", "piano")]
    tokens += [tokenizer.form_token(form)] if form else []
    tokens.append("<S>")
    segment, section_start = 0, 0
    for letter, notes in sections:
        tokens.append(tokenizer.section_token(letter))
        for pitch, onset, duration in notes:
            absolute = section_start + onset
            while absolute >= (segment + 1) * SEGMENT_MS:
                tokens.append("<T>")
                segment += 1
            tokens += [("piano", pitch, 80), ("onset", absolute % SEGMENT_MS), ("dur", duration)]
        section_start += max(onset + duration for _, onset, duration in notes) + 500
    tokens += ["<E>"] if eos else []
    return tokenizer.encode(tokens)


def sample(ids, midi_path: Path, form=None, eos=True) -> GeneratedSample:
    return GeneratedSample(
        name=midi_path.stem,
        midi_path=midi_path,
        form=form,
        style=None,
        token_ids=tuple(ids),
        prompt_ids=(),
        ended_with_eos=eos,
    )


def read_notes_from(notes):
    pitch, start, duration = (
        np.array(column, dtype=np.float64) for column in zip(*notes, strict=True)
    )
    return NoteTable(
        family=np.zeros(len(pitch), dtype=np.int64),
        pitch=pitch.astype(np.int64),
        velocity=np.full(len(pitch), 80),
        start_ms=start,
        end_ms=start + duration,
    )


def test_decoding_follows_time_tokens_and_sections(tokenizer, table):
    late = [(60, 0, 100), (62, 6000, 250)]  # the second note crosses one <T>
    piece = sectioned_notes(sequence_ids(tokenizer, [("A", late), ("B", [(70, 0, 10)])]), table)
    assert piece.letters == ("A", "B")
    np.testing.assert_array_equal(piece.notes.start_ms, [0, 6000, 6750])
    np.testing.assert_array_equal(piece.notes.end_ms, [100, 6250, 6760])
    np.testing.assert_array_equal(piece.notes.pitch, [60, 62, 70])
    np.testing.assert_array_equal(piece.note_section, [0, 0, 1])


def test_decoding_stops_at_the_first_end_token(tokenizer, table):
    ids = sequence_ids(tokenizer, [("A", A_NOTES)]) + sequence_ids(tokenizer, [("B", B_NOTES)])
    piece = sectioned_notes(ids, table)
    assert piece.letters == ("A",) and len(piece.notes) == 3


def test_label_token_ids_are_the_form_and_section_tokens(tokenizer, table):
    hidden = tokenizer.decode(table.ids_of(TokenKind.FORM, TokenKind.SECTION).tolist())
    sections = [f"<{letter}_SECTION>" for letter in "ABCD"]
    forms = ["<A>", "<AB>", "<ABC>", "<ABA>", "<ABAB>", "<ABAC>", "<ABCA>", "<ABCB>", "<ABCD>"]
    assert sorted(hidden) == sorted(sections + forms)


def test_identical_repeat_scores_one_and_new_letter_scores_shared_rhythm_only(tokenizer, table):
    ids = sequence_ids(tokenizer, [("A", A_NOTES), ("B", B_NOTES), ("A", A_NOTES)], form="ABA")
    same, different = section_similarities(sectioned_notes(ids, table))
    # Profiles: A = pitch classes 1/3 x3, intervals +4,+3 at 1/2, IOI and duration bins at 1;
    # B = one pitch class, interval 0, the same IOI and duration bins. Only rhythm overlaps.
    cosine_ab = 2 / np.sqrt((3 / 9 + 2 / 4 + 2) * 4)
    np.testing.assert_allclose(same, [1.0])
    np.testing.assert_allclose(different, [cosine_ab, cosine_ab])  # B vs A, second A vs B


def test_texture_of_a_silent_gap_and_of_a_chord():
    gap = texture(read_notes_from([(60, 0, 1000), (62, 2000, 1000)]))
    assert gap.silence_ratio == pytest.approx(1 / 3)
    assert gap.polyphony == pytest.approx(1.0)
    assert gap.note_density == pytest.approx(2 / 3)
    chord = texture(
        read_notes_from([(60, 0, 1000), (64, 0, 1000), (67, 0, 1000), (72, 1000, 1000)])
    )
    assert chord.silence_ratio == pytest.approx(0.0)
    assert chord.polyphony == pytest.approx((3 * 1000 + 1 * 1000) / 2000)
    assert chord.note_density == pytest.approx(2.0)


def test_jensen_shannon_distance_known_values():
    assert jensen_shannon_distance(np.array([3.0, 1.0]), np.array([6.0, 2.0])) == pytest.approx(0.0)
    assert jensen_shannon_distance(np.array([1.0, 0.0]), np.array([0.0, 5.0])) == pytest.approx(1.0)
    # p = (1, 0), q = (1/2, 1/2), mean = (3/4, 1/4)
    divergence = (np.log2(4 / 3) + 0.5 * np.log2(2 / 3) + 0.5 * np.log2(2)) / 2
    assert jensen_shannon_distance(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(
        np.sqrt(divergence)
    )


def test_structure_metrics_over_a_set(tokenizer, table, tmp_path):
    aba = sequence_ids(tokenizer, [("A", A_NOTES), ("B", B_NOTES), ("A", A_NOTES)], form="ABA")
    ab_cut = sequence_ids(tokenizer, [("A", A_NOTES), ("B", B_NOTES)], form="ABA", eos=False)
    broken = tmp_path / "broken.mid"
    broken.write_bytes(b"MThd not really")
    samples = [
        sample(aba, write_midi(tmp_path / "aba.mid", A_NOTES), form="ABA"),
        sample(ab_cut, write_midi(tmp_path / "cut.mid", A_NOTES), form="ABA", eos=False),
        sample(aba, broken, form="ABA"),
        sample(aba, tmp_path / "missing.mid", form=None),
    ]
    reference = [read_notes_from(A_NOTES)]
    metrics = structure_metrics(samples, table, reference=reference)
    assert metrics.num_samples == 4
    assert metrics.eos_fraction == 0.75
    assert metrics.valid_midi_fraction == 0.5
    assert metrics.complete_fraction == 0.25
    assert metrics.form_match_fraction == pytest.approx(2 / 3)  # the 4th asked for no form
    cosine_ab = 2 / np.sqrt((3 / 9 + 2 / 4 + 2) * 4)
    assert metrics.section_similarity_same == pytest.approx(1.0)
    assert metrics.section_similarity_different == pytest.approx(cosine_ab)
    assert metrics.section_similarity_gap == pytest.approx(1.0 - cosine_ab)
    # ABA: notes over 0-1.5 s, 2-3.5 s, 4-5.5 s (1 s of 5.5 s silent); the cut AB: 0.5 s of 3.5 s.
    assert metrics.silence_ratio == pytest.approx((3 * (1 / 5.5) + 0.5 / 3.5) / 4)
    assert metrics.polyphony == pytest.approx(1.0)
    assert metrics.duration_js == pytest.approx(0.0)
    # Pooled over the four decoded pieces (three ABA, one AB) against the reference A.
    # Onset gaps: ABA has six of 500 ms and two of 1 s (a section starts 1 s after the last
    # onset of the one before), AB four and one, so p = (22, 7) / 29; the reference: q = (1, 0).
    m = np.array([(22 / 29 + 1) / 2, 7 / 58])
    kl_p = 22 / 29 * np.log2(22 / 29 / m[0]) + 7 / 29 * np.log2(7 / 29 / m[1])
    kl_q = np.log2(1 / m[0])
    assert metrics.inter_onset_js == pytest.approx(np.sqrt((kl_p + kl_q) / 2))
    # Pitch classes C, D, E, G: ABA counts 2, 3, 2, 2 and AB 1, 3, 1, 1, so p = (7, 12, 7, 7) / 33;
    # the reference A: q = (1, 0, 1, 1) / 3; their mean m = (9, 6, 9, 9) / 33.
    kl_p = 3 * 7 / 33 * np.log2(7 / 9) + 12 / 33 * np.log2(12 / 6)
    kl_q = np.log2(11 / 9)
    assert metrics.pitch_class_js == pytest.approx(np.sqrt((kl_p + kl_q) / 2))
    assert set(metrics.as_dict()) >= {"section_similarity_gap", "note_density"}


def test_tokenized_real_piece_is_close_to_itself(tokenizer, table):
    name = "nocturne.mid" if aria_reference.is_shared() else "waltz.mid"  # waltz: vendored
    path = aria_reference.folder() / "aria-example-prompts" / name
    generated = sample(tokenizer.tokenize_ids(path).tolist(), path)
    metrics = structure_metrics([generated], table, reference=[read_notes(path)])
    assert metrics.pitch_class_js < 0.02
    assert metrics.duration_js < 0.1
    assert metrics.valid_midi_fraction == 1.0
    assert metrics.section_similarity_same is None  # no section tokens, nothing to compare


def test_wilson_interval_known_values():
    # 5 of 10: centre 0.5, half-width 1.96 sqrt(0.025 + 0.009604) / 1.38416 = 0.26340
    low, high = wilson_interval(5, 10)
    assert (low, high) == (pytest.approx(0.23659, abs=1e-5), pytest.approx(0.76341, abs=1e-5))
    # 0 of 4: [0, z^2 / (n + z^2)]
    assert wilson_interval(0, 4) == (pytest.approx(0.0), pytest.approx(3.8416 / 7.8416))
    assert wilson_interval(0, 0) is None


def test_chance_is_a_random_form_no_gap_and_uniform_notes():
    # Every reference note has pitch class 0: uniform p = 1/12 each, q = all mass on 0,
    # mean m = (13/24, 1/24 x 11).
    reference = [read_notes_from([(60, 0, 500), (72, 500, 500)])]
    chance = chance_metrics(reference, num_forms=9)
    kl_p = (1 / 12) * np.log2((1 / 12) / (13 / 24)) + (11 / 12) * np.log2(2)
    kl_q = np.log2(24 / 13)
    assert chance["pitch_class_js"] == pytest.approx(np.sqrt((kl_p + kl_q) / 2))
    assert chance["form_match_fraction"] == pytest.approx(1 / 9)
    assert chance["section_similarity_gap"] == 0.0
    assert chance_metrics([], 9)["duration_js"] is None


def test_reference_values_are_what_the_reference_itself_scores(tokenizer, table):
    aba = sequence_ids(tokenizer, [("A", A_NOTES), ("B", B_NOTES), ("A", A_NOTES)], form="ABA")
    pieces = [sectioned_notes(aba, table)] * 4
    reference = reference_metrics(pieces, ["ABA", "ABA", "ABA", None])
    assert reference["eos_fraction"] == 1.0 and reference["form_match_fraction"] == 1.0
    cosine_ab = 2 / np.sqrt((3 / 9 + 2 / 4 + 2) * 4)
    assert reference["section_similarity_gap"] == pytest.approx(1.0 - cosine_ab)
    # Two equal halves: every histogram distance is 0.
    assert reference["pitch_class_js"] == pytest.approx(0.0)
    assert reference_metrics(pieces[:1], ["ABA"])["pitch_class_js"] is None


def test_intervals_cover_the_value_and_every_metric_has_a_meaning(tokenizer, table, tmp_path):
    aba = sequence_ids(tokenizer, [("A", A_NOTES), ("B", B_NOTES), ("A", A_NOTES)], form="ABA")
    ab = sequence_ids(tokenizer, [("A", A_NOTES), ("B", B_NOTES)], form="ABA", eos=False)
    midi = write_midi(tmp_path / "a.mid", A_NOTES)
    samples = [sample(aba, midi, form="ABA"), sample(ab, midi, form="ABA", eos=False)] * 3
    metrics = structure_metrics(samples, table).as_dict()
    intervals = metric_intervals(samples, table)
    assert intervals["eos_fraction"] == wilson_interval(3, 6)
    assert intervals["form_match_fraction"] == wilson_interval(3, 6)
    for name in ("section_similarity_gap", "silence_ratio", "note_density"):
        low, high = intervals[name]
        assert low <= metrics[name] <= high, name
    # Every ABA sample has the same gap: resampling cannot move it.
    assert intervals["section_similarity_gap"][0] == pytest.approx(
        intervals["section_similarity_gap"][1]
    )
    assert set(MEANINGS) == set(StructureMetrics.__dataclass_fields__)


def test_evaluation_reads_the_notes_the_written_midi_holds(tokenizer, table, tmp_path):
    """Differential: for random id streams (well-formed notes among stray and broken tokens,
    drums, <T>, section tokens), evaluation's notes are exactly the pitched notes of the MIDI
    file the same ids write, as pretty_midi reads that file. Pitches are distinct within a case:
    one MIDI channel cannot hold two overlapping notes of one pitch apart."""
    generator = np.random.default_rng(7)
    vocab = tokenizer.vocab_size()
    for case in range(20):
        tokens = [("prefix", "instrument", "piano"), "<S>"]
        onset, pitches = 0, iter(generator.permutation(np.arange(21, 109)).tolist())
        for _ in range(int(generator.integers(5, 40))):
            roll = generator.random()
            onset = min(onset + int(generator.integers(0, 50)) * 10, SEGMENT_MS - 10)
            if roll < 0.6:
                velocity = int(generator.integers(1, 13)) * 10
                duration = int(generator.integers(1, 200)) * 10
                tokens += [("piano", next(pitches), velocity)]
                tokens += [("onset", onset), ("dur", duration)]
            elif roll < 0.7:
                tokens += [("drum", int(generator.integers(35, 82))), ("onset", onset)]
            elif roll < 0.8:
                tokens += ["<T>"]
                onset = 0
            elif roll < 0.9:
                tokens.append(tokenizer.section_token(str(generator.choice(list("ABCD")))))
            else:
                tokens += tokenizer.decode([int(generator.integers(0, vocab))])
        if "<E>" in tokens:
            tokens = tokens[: tokens.index("<E>")]
        ids = tokenizer.encode(tokens)
        ours = sectioned_notes(ids, table).notes
        path = tmp_path / f"case{case}.mid"
        tokenizer.write_midi(tokens, path)
        written = [
            (round(note.start * 1000), round(note.end * 1000), note.pitch, note.velocity)
            for instrument in pretty_midi.PrettyMIDI(str(path)).instruments
            if not instrument.is_drum
            for note in instrument.notes
        ]
        expected = sorted(
            zip(
                ours.start_ms.astype(int).tolist(),
                ours.end_ms.astype(int).tolist(),
                ours.pitch.tolist(),
                ours.velocity.tolist(),
                strict=True,
            )
        )
        assert sorted(written) == expected, case


def test_paired_mean_interval_pools_repeats_skips_gaps_and_pairs_its_draws():
    values = np.array([[1.0, np.nan], [0.0, 1.0], [1.0, 1.0]])
    mean, (low, high) = paired_mean_interval(values, resamples=500)
    assert mean == pytest.approx(4 / 5)  # NaN is no value, not a zero
    assert 0.0 <= low <= mean <= high <= 1.0
    assert paired_mean_interval(np.full((4, 3), 0.25)) == (0.25, (0.25, 0.25))
    assert paired_mean_interval(np.full((2, 2), np.nan)) == (None, None)
    # the same number of units draws the same resamples: one shift moves both ends alike
    shifted = paired_mean_interval(values + 1.0, resamples=500)
    assert shifted[1] == (pytest.approx(low + 1.0), pytest.approx(high + 1.0))
    # a plain vector is one repeat per unit, as mean_interval's bootstrap
    vector = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    paired, plain = paired_mean_interval(vector), mean_interval(vector)
    assert paired[0] == pytest.approx(plain[0])
    assert paired[1] == (pytest.approx(plain[1][0]), pytest.approx(plain[1][1]))
