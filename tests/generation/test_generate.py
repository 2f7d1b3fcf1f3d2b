"""`staria-generate` end to end on tiny checkpoints trained by the real Trainer: Staria, baseline
and from-scratch prompts write MIDI files that read back and a manifest evaluation can read."""

import json
from pathlib import Path

import numpy as np
import pretty_midi
import pytest
from generation.runs import train_tiny_run
from hydra import compose, initialize_config_dir

from staria.data.datasets import PieceSource, SequenceSettings
from staria.data.preprocess import CachedSplit, TokenLayout
from staria.evaluation.samples import read_manifest
from staria.generation.checkpoint import load_checkpoint
from staria.generation.generate import generate
from staria.generation.manifest import OutputFolderError
from staria.generation.prompts import PromptError, piece_from_split, section_snippets
from staria.generation.sampling import SamplingConfigError
from staria.paths import REPO_ROOT
from staria.tokenizer import MusicTokenizerWithStyle

TOKENIZER = MusicTokenizerWithStyle()
MANIFEST_SAMPLE_KEYS = {"file", "form", "style", "token_ids", "prompt_ids", "ended_with_eos"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("generation_runs")
    return {
        "staria": train_tiny_run(root, "smoke", "staria"),
        "baseline": train_tiny_run(root, "demo_baseline", "baseline"),
    }


def run_generate(checkpoint: Path, out_dir: Path, *overrides: str) -> Path:
    settings = [f"checkpoint={checkpoint}", f"out_dir={out_dir}", "device=cpu"]
    with initialize_config_dir(str(REPO_ROOT / "conf"), version_base="1.3"):
        cfg = compose(
            "generate",
            [*settings, "num_samples=3", "batch_size=2", "sampling.max_length=48", *overrides],
        )
    return generate(cfg)


def val_split(checkpoint: Path) -> CachedSplit:
    cache = Path(load_checkpoint(checkpoint).data_settings.cache_dir)
    (folder,) = cache.glob("dataset_*_val")
    return CachedSplit(folder)


def assert_valid_samples(manifest: Path, count: int) -> list:
    samples = read_manifest(manifest)
    assert len(samples) == count
    for sample in samples:
        assert pretty_midi.PrettyMIDI(str(sample.midi_path)).resolution > 0
        assert 0 < len(sample.token_ids) <= 48
        assert sample.ended_with_eos == (TOKENIZER.eos_id in sample.token_ids)
    return samples


def test_staria_samples_start_the_piece_and_carry_the_data_modules_snippets(runs, tmp_path):
    manifest = run_generate(runs["staria"], tmp_path, "prompt.form=ABA")
    samples = assert_valid_samples(manifest, 3)
    split = val_split(runs["staria"])
    source = PieceSource(split, TokenLayout(TOKENIZER))
    settings = SequenceSettings(snippet_len=64, max_snippets=4)
    for index, sample in enumerate(samples):
        ids = split.tokens(index)
        expected = [s.tolist() for s in source.snippets(index, ids, settings)]
        assert [list(s) for s in sample.prompt_ids] == expected
        assert all(s[0] in TokenLayout(TOKENIZER).section_id.values() for s in sample.prompt_ids)
        start = TOKENIZER.decode(list(sample.token_ids[:4]))
        assert start == [("prefix", "instrument", "piano"), "<ABA>", "<S>", "<A_SECTION>"]
        assert sample.form == "ABA"
        assert sample.style == split.pieces[index].style["genre"]
    record = json.loads(manifest.read_text())
    assert set(record) == {"checkpoint", "config", "seed", "timing", "samples"}
    assert set(record["samples"][0]) >= MANIFEST_SAMPLE_KEYS
    assert record["checkpoint"] == str(runs["staria"].resolve())
    assert record["config"]["sampling"]["max_length"] == 48
    assert record["timing"]["tokens_per_s"] > 0 and record["timing"]["batches"] == 2


def test_generation_is_deterministic_under_a_seed(runs, tmp_path):
    first = read_manifest(run_generate(runs["staria"], tmp_path / "a", "seed=3"))
    again = read_manifest(run_generate(runs["staria"], tmp_path / "b", "seed=3"))
    other = read_manifest(run_generate(runs["staria"], tmp_path / "c", "seed=4"))
    assert [s.token_ids for s in first] == [s.token_ids for s in again]
    assert [s.token_ids for s in first] != [s.token_ids for s in other]
    assert (tmp_path / "a" / "sample_000.mid").read_bytes() == (
        tmp_path / "b" / "sample_000.mid"
    ).read_bytes()


def test_baseline_reads_the_snippet_block_and_records_only_the_piece(runs, tmp_path):
    manifest = run_generate(runs["baseline"], tmp_path)
    samples = assert_valid_samples(manifest, 3)
    record = json.loads(manifest.read_text())["samples"][0]
    model_prompt = TOKENIZER.decode(record["prompt"]["model_prompt_ids"])
    assert model_prompt[0] == "<PROMPT_START>"
    end = model_prompt.index("<PROMPT_END>")
    assert record["prompt"]["model_prompt_ids"][1:end] == [
        token for snippet in record["prompt_ids"] for token in snippet
    ]
    assert model_prompt[end + 1 :] == TOKENIZER.decode(list(samples[0].token_ids[:4]))
    assert "<PROMPT_END>" not in TOKENIZER.decode(list(samples[0].token_ids))


@pytest.mark.parametrize("model", ["staria", "baseline"])
def test_from_scratch_starts_at_the_piano_prefix(runs, tmp_path, model):
    samples = assert_valid_samples(run_generate(runs[model], tmp_path, "prompt.source=scratch"), 3)
    for sample in samples:
        assert TOKENIZER.decode(list(sample.token_ids[:2])) == [
            ("prefix", "instrument", "piano"),
            "<S>",
        ]
        assert sample.prompt_ids == () and sample.form is None


def test_snippets_from_a_labelled_midi_file_match_its_indexed_piece(runs, tmp_path):
    split = val_split(runs["staria"])
    midi = Path(split.pieces[0].path)
    manifest = run_generate(
        runs["staria"], tmp_path, "prompt.source=midi", f"prompt.midi=[{midi}]", "num_samples=2"
    )
    samples = read_manifest(manifest)
    layout = TokenLayout(TOKENIZER)
    indexed = section_snippets(piece_from_split(split, 0, TOKENIZER), layout, 64, 4)
    expected = [s.tolist() for s in indexed]
    assert all([list(s) for s in sample.prompt_ids] == expected for sample in samples)
    assert all(sample.form == split.pieces[0].form for sample in samples)


def test_a_midi_file_without_labels_is_refused_by_name(runs, tmp_path):
    midi = tmp_path / "unlabelled.mid"
    midi.write_bytes(Path(val_split(runs["staria"]).pieces[0].path).read_bytes())
    with pytest.raises(PromptError, match=r"unlabelled\.mid"):
        run_generate(
            runs["staria"], tmp_path / "out", "prompt.source=midi", f"prompt.midi=[{midi}]"
        )


def test_decoded_midi_holds_the_sampled_notes(runs, tmp_path):
    samples = read_manifest(run_generate(runs["staria"], tmp_path, "sampling.max_length=200"))
    for sample in samples:
        notes = TOKENIZER.ids_to_notes(np.asarray(sample.token_ids))
        written = pretty_midi.PrettyMIDI(str(sample.midi_path))
        assert sum(len(i.notes) for i in written.instruments) == len(notes)


def test_regenerating_into_a_folder_replaces_the_earlier_generation_whole(runs, tmp_path):
    out_dir = tmp_path / "out"
    run_generate(runs["staria"], out_dir, "num_samples=3")
    (out_dir / "report.html").write_text("<html>an earlier report</html>")
    manifest = run_generate(runs["staria"], out_dir, "num_samples=1")
    assert sorted(p.name for p in out_dir.iterdir()) == ["manifest.json", "sample_000.mid"]
    assert_valid_samples(manifest, 1)
    assert [p.name for p in tmp_path.iterdir()] == ["out"], "no partial or old folder left"


def test_a_folder_of_other_files_and_no_samples_are_refused_before_sampling(runs, tmp_path):
    checkpoint = runs["staria"]
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OutputFolderError, match="not a generation's"):
        run_generate(checkpoint, tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    with pytest.raises(SamplingConfigError, match="num_samples=0"):
        run_generate(checkpoint, tmp_path / "new", "num_samples=0")
