"""Wake labelling: per-token letters -> smoothed sections -> label files the data module reads."""

import numpy as np
import pytest
import torch

from staria.data.datamodule import MidiDataModule
from staria.data.labels import PieceLabels, labels_path
from staria.generation.judge import ClassifierJudge
from staria.generation.section_labelling import (
    LABELLING_REPORT,
    SectionLabeller,
    canonical_letters,
    classifier_labeller,
    smooth_note_letters,
)
from staria.research.phases import last_checkpoint
from staria.research.wake_sleep import label_phase
from staria.tokenizer import FORMS, MusicTokenizerWithStyle
from staria.tokenizer.midi_io import read_notes
from tests.training.runs import first_train_batch

PROMPTS = "aria-example-prompts"


def test_letters_are_renamed_in_order_of_first_appearance():
    assert canonical_letters("BAB") == "ABA"
    assert canonical_letters("CCAD") == "AABC"


def test_short_runs_merge_into_their_longer_neighbour():
    letters = list("AAAAAA" + "B" + "AAAA" + "CCCCCCC" + "DD" + "CCCCCC")
    smoothed = smooth_note_letters(letters, min_section_notes=3)
    assert "".join(smoothed) == "A" * 11 + "B" * 15


def test_smoothing_always_ends_at_a_known_form():
    rng = np.random.default_rng(0)
    for _ in range(20):
        letters = rng.choice(list("ABCD"), size=int(rng.integers(1, 200)))
        smoothed = smooth_note_letters(letters, min_section_notes=8)
        runs = "".join(smoothed[np.r_[True, smoothed[1:] != smoothed[:-1]]])
        assert runs in FORMS
        assert smoothed[0] == "A"


def halves_predictor(tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    """Letter A for the first half of every window, B for the second: a known answer."""
    logits = torch.zeros(*tokens.shape, 4)
    half = tokens.shape[1] // 2
    logits[:, :half, 0] = 1
    logits[:, half:, 1] = 1
    return logits


def test_a_known_predictor_gives_a_two_section_label_at_the_switch(shared_midi_dir):
    path = shared_midi_dir / PROMPTS / "nocturne.mid"
    labeller = SectionLabeller(halves_predictor, window_tokens=100_000, min_section_notes=4)
    labels = labeller.label(path)
    assert labels.form == "AB"
    assert labels.source == "labelled"
    notes = read_notes(path.read_bytes())
    letters = labels.letters_for_onsets(np.sort(notes.start_ms) / 1000.0)
    # About half the notes in each section (3 tokens per note, the prefix is short).
    assert 0.4 < np.mean(letters == "A") < 0.6
    assert set(letters) == {"A", "B"}


def test_a_trained_classifier_labels_real_midi_that_the_data_module_reads(
    classifier_run, shared_midi_dir, tmp_path
):
    wake = label_phase(
        "label", last_checkpoint(classifier_run), [shared_midi_dir / PROMPTS], tmp_path / "wake"
    )
    assert not wake.skipped
    label_files = sorted(wake.folder.rglob("*.json"))
    label_files.remove(wake.folder / LABELLING_REPORT)
    assert len(label_files) == 6
    for label_file in label_files:
        labels = PieceLabels.load(label_file)
        assert labels.form in FORMS
        assert label_file.with_suffix(".mid").is_file()

    again = label_phase("label", last_checkpoint(classifier_run), [], tmp_path / "wake")
    assert again.skipped

    data = MidiDataModule(
        mode="real",
        task="generative",
        model_kind="staria",
        name="wake_test",
        cache_dir=str(tmp_path / "cache"),
        folders=[str(wake.folder)],
        val_fraction=0.0,
        test_fraction=0.0,
        snippet_len=16,
        max_seq_len=128,
        batch_size=6,
    )
    batch = first_train_batch(data)
    tok = MusicTokenizerWithStyle()
    form_ids = {tok.token_to_id[tok.form_token(form)] for form in FORMS}
    section_ids = [tok.token_to_id[tok.section_token(letter)] for letter in "ABCD"]
    forms_by_file = {f.with_suffix(".mid").resolve(): PieceLabels.load(f).form for f in label_files}
    assert len(batch["tokens"]) == 6
    for row in range(len(batch["tokens"])):
        tokens = batch["tokens"][row][batch["token_mask"][row]].tolist()
        assert len(form_ids & set(tokens)) == 1
        rows = batch["snippet_mask"][row].any(dim=-1)
        first = batch["snippets"][row, rows, 0].tolist()
        assert first == section_ids[: len(first)]
    distinct = sorted(len(set(form)) for form in forms_by_file.values())
    assert sorted(int(batch["snippet_mask"][r].any(-1).sum()) for r in range(6)) == distinct


def test_the_classifier_labeller_reads_what_its_encoder_can_read(classifier_run):
    labeller = classifier_labeller(last_checkpoint(classifier_run))
    judge = ClassifierJudge(last_checkpoint(classifier_run))
    # the run's data fed 256 tokens; its encoder's positions reach at least that far
    assert labeller.window_tokens == judge.max_len == min(256, judge.net.encoder.net.max_seq_len)
    tokens = torch.randint(10, 1000, (1, 20))
    assert labeller.predict(tokens, torch.ones_like(tokens, dtype=torch.bool)).shape == (1, 20, 4)
    too_long = torch.randint(10, 1000, (1, judge.max_len + 1))
    with pytest.raises(ValueError, match=f"reads {judge.max_len}"):
        judge.section_logits(too_long, torch.ones_like(too_long, dtype=torch.bool))


def test_an_unreadable_file_is_reported_not_labelled(shared_midi_dir, tmp_path):
    broken = shared_midi_dir / "miditok-tests" / "empty.mid"
    if not broken.is_file():
        pytest.skip(f"{broken} is absent")
    labeller = SectionLabeller(halves_predictor)
    report = labeller.label_folder([broken], tmp_path / "wake")
    assert '"skipped"' in report.read_text()
    assert not labels_path(tmp_path / "wake" / "empty.mid").exists()
