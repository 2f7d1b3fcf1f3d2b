"""The orchestrator runs each phase once: a finished phase is skipped on the next call."""

import json

import numpy as np

from staria.generation.manifest import MANIFEST_FILE
from staria.research.phases import last_checkpoint, run_generate_phase, run_train_phase
from staria.research.wake_sleep import dream_labels, dream_phase
from staria.tokenizer import MusicTokenizerWithStyle, TokenTable
from staria.training.resume import FINISHED_MARKER
from tests.research.tiny import TINY_TRAINING


def test_a_finished_train_phase_is_skipped(classifier_run):
    checkpoint = last_checkpoint(classifier_run)
    written = checkpoint.stat().st_mtime_ns
    result = run_train_phase("classifier", "compare_classifier", classifier_run, TINY_TRAINING)
    assert result.skipped
    assert (classifier_run / FINISHED_MARKER).is_file()
    assert checkpoint.stat().st_mtime_ns == written


def test_an_unfinished_train_phase_runs_and_a_generate_phase_skips_once_sampled(
    research_cache, tmp_path
):
    run_dir = tmp_path / "staria"
    trained = run_train_phase("staria", "compare_staria", run_dir, TINY_TRAINING)
    assert not trained.skipped
    samples = tmp_path / "samples"
    overrides = ["num_samples=2", "sampling.max_length=24", "prompt.split=val"]
    first = run_generate_phase("samples", last_checkpoint(run_dir), samples, overrides)
    assert not first.skipped
    manifest = json.loads((samples / MANIFEST_FILE).read_text())
    assert len(manifest["samples"]) == 2
    assert manifest["samples"][0]["prompt_ids"]
    written = (samples / MANIFEST_FILE).stat().st_mtime_ns
    second = run_generate_phase("samples", last_checkpoint(run_dir), samples, overrides)
    assert second.skipped
    assert (samples / MANIFEST_FILE).stat().st_mtime_ns == written


def note(tok: MusicTokenizerWithStyle, pitch: int, onset: int) -> list[int]:
    return tok.encode([("piano", pitch, 60), ("onset", onset), ("dur", 100)])


def aba_sample(tok: MusicTokenizerWithStyle, form_letters: str) -> list[int]:
    ids = tok.encode([("prefix", "instrument", "piano"), tok.form_token("ABA"), "<S>"])
    for index, letter in enumerate(form_letters):
        ids += tok.encode([tok.section_token(letter)])
        ids += note(tok, 60 + index, 1000 * index) + note(tok, 64, 1000 * index + 500)
    return [*ids, tok.eos_id]


def test_dream_labels_follow_the_sample_section_tokens_and_need_the_requested_form(tmp_path):
    tok = MusicTokenizerWithStyle()
    table = TokenTable.from_tokenizer(tok)
    labels = dream_labels(aba_sample(tok, "ABA"), "ABA", table)
    assert labels is not None
    assert labels.form == "ABA"
    assert [s.start for s in labels.sections] == [0.0, 1.0, 2.0]
    assert labels.letters_for_onsets(np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5])).tolist() == list(
        "AABBAA"
    )
    assert dream_labels(aba_sample(tok, "AB"), "ABA", table) is None


def test_the_dream_phase_keeps_samples_that_kept_their_form(tmp_path):
    tok = MusicTokenizerWithStyle()
    samples = tmp_path / "samples"
    samples.mkdir()
    records = []
    for index, letters in enumerate(("ABA", "AB")):
        ids = aba_sample(tok, letters)
        file = f"sample_{index:03d}.mid"
        tok.detokenize(tok.decode(ids)).write(str(samples / file))
        records.append(
            {
                "file": file,
                "form": "ABA",
                "style": None,
                "token_ids": ids,
                "prompt_ids": [],
                "ended_with_eos": True,
            }
        )
    (samples / MANIFEST_FILE).write_text(json.dumps({"samples": records}))
    dreams = dream_phase(samples / MANIFEST_FILE, tmp_path / "dreams")
    assert sorted(p.name for p in dreams.iterdir()) == [
        "dream.json",
        "sample_000.json",
        "sample_000.mid",
    ]
