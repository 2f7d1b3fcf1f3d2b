"""`staria-generate` end to end on tiny checkpoints trained by the real Trainer: Staria, baseline
and from-scratch prompts write MIDI files that read back and a manifest evaluation can read."""

import json
import re
from pathlib import Path

import numpy as np
import pretty_midi
import pytest

from staria.data.cache import CachedSplit
from staria.data.datasets import PieceSource, SequenceSettings, section_snippets
from staria.data.sequences import TokenLayout
from staria.evaluation.samples import read_manifest
from staria.generation.checkpoint import load_checkpoint
from staria.generation.generate import data_split, generate
from staria.generation.manifest import OutputFolderError
from staria.generation.prompts import PromptError, piece_from_split
from staria.generation.sampling import SamplingConfigError
from staria.tokenizer import MusicTokenizerWithStyle
from staria.tokenizer.midi_io import read_notes
from tests.generation.runs import train_tiny_run
from tests.harness import compose_config

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
    shrink = ["num_samples=3", "batch_size=2", "sampling.max_length=48"]
    return generate(compose_config("generate", *settings, *shrink, *overrides))


def val_split(checkpoint: Path) -> CachedSplit:
    """The val split of the checkpoint's own data (the module's runs share one cache)."""
    return data_split(load_checkpoint(checkpoint), "val")


def assert_valid_samples(manifest: Path, count: int) -> list:
    samples = read_manifest(manifest)
    assert len(samples) == count
    for sample in samples:
        assert pretty_midi.PrettyMIDI(str(sample.midi_path)).resolution > 0
        assert 0 < len(sample.token_ids) <= 48
        assert sample.ended_with_eos == (TOKENIZER.eos_id in sample.token_ids)
    return samples


@pytest.mark.parametrize("model", ["staria", "baseline"])
def test_prompt_forms_ask_each_piece_for_its_own_target_form(runs, model, tmp_path):
    forms = ["AB", "ABAC", "A"]
    manifest = run_generate(
        runs[model], tmp_path, "prompt.pieces=[2,0,1]", f"prompt.forms=[{','.join(forms)}]"
    )
    samples = assert_valid_samples(manifest, 3)
    split = val_split(runs[model])
    for sample, form, index in zip(samples, forms, [2, 0, 1], strict=True):
        assert sample.form == form
        assert TOKENIZER.decode(list(sample.token_ids[1:2])) == [f"<{form}>"]
        assert sample.style == split.pieces[index].style["genre"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (("prompt.forms=[AB,ABA]",), "2 forms for 3 conditioning pieces"),
        (("prompt.forms=[AB,ABA,A]", "prompt.form=AB"), "both set"),
        (("prompt.forms=[AB,XYZ,A]",), "XYZ"),
    ],
)
def test_prompt_forms_that_cannot_be_asked_are_refused_by_name(runs, overrides, message, tmp_path):
    with pytest.raises(PromptError, match=message):
        run_generate(runs["staria"], tmp_path, *overrides)
    assert not (tmp_path / "manifest.json").exists()


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
    assert set(record) == {"checkpoint", "provenance", "config", "seed", "timing", "samples"}
    history = json.loads((runs["staria"].parent / "checkpoint_history.json").read_text())
    validated = [e for e in history if e["value"] is not None]
    provenance = record["provenance"]
    assert provenance["step"] == 1 and provenance["model"] == "StariaModel"
    assert provenance["val_loss"] == validated[-1]["value"] and provenance["val_loss_step"] == 1
    assert provenance["uniform_loss"] == pytest.approx(np.log(17742))
    assert re.fullmatch(r"[0-9a-f]{12}(-dirty)?", provenance["commit"])
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
    piece = piece_from_split(split, 0, TOKENIZER)
    indexed = section_snippets(piece.ids, piece.sections, layout, SequenceSettings(64, 4))
    expected = [s.tolist() for s in indexed]
    assert all([list(s) for s in sample.prompt_ids] == expected for sample in samples)
    assert all(sample.form == split.pieces[0].form for sample in samples)


def plain_copy(runs, tmp_path) -> tuple[Path, np.ndarray]:
    """A labelled piece's MIDI file without its labels, and its plain token ids."""
    midi = tmp_path / "unlabelled.mid"
    midi.write_bytes(Path(val_split(runs["staria"]).pieces[0].path).read_bytes())
    return midi, TOKENIZER.notes_to_ids(read_notes(midi))


def manifest_prompts(manifest: Path) -> list[dict]:
    return [record["prompt"] for record in json.loads(manifest.read_text())["samples"]]


def test_a_plain_midi_file_is_one_a_section_as_training_reads_it(runs, tmp_path):
    midi, ids = plain_copy(runs, tmp_path)
    body = ids[list(ids).index(TOKENIZER.bos_id) + 1 :]
    # A checkpoint trained on labelled pieces needs a form to start a sample: named refusal.
    with pytest.raises(PromptError, match=r"unlabelled\.mid.*prompt\.form"):
        run_generate(runs["staria"], tmp_path / "a", "prompt.source=midi", f"prompt.midi=[{midi}]")
    for model in ("staria", "baseline"):
        manifest = run_generate(
            runs[model],
            tmp_path / model,
            "prompt.source=midi",
            f"prompt.midi=[{midi}]",
            "prompt.form=ABA",
        )
        sample = read_manifest(manifest)[0]
        section_a = TOKENIZER.token_to_id[TOKENIZER.section_token("A")]
        assert [list(s) for s in sample.prompt_ids] == [[section_a, *body[:64].tolist()]]
        start = manifest_prompts(manifest)[0]
        assert TOKENIZER.decode(start["decoder_start_ids"])[1:] == ["<ABA>", "<S>", "<A_SECTION>"]
        assert start["sections_from"] == "whole" and start["source"] == str(midi)


def test_time_windows_cut_one_snippet_per_window(runs, tmp_path):
    midi, _ = plain_copy(runs, tmp_path)
    notes = read_notes(midi)
    onsets = notes.start_ms / 1000.0
    middle = float(np.median(onsets))
    windows = [[0.0, middle], [middle, float(onsets.max()) + 1.0]]
    manifest = run_generate(
        runs["staria"],
        tmp_path / "w",
        "prompt.source=midi",
        f"prompt.midi=[{midi}]",
        f"prompt.windows={json.dumps(windows)}",
        "num_samples=1",
    )
    sample = read_manifest(manifest)[0]
    assert sample.form == "AB" and manifest_prompts(manifest)[0]["sections_from"] == "windows"
    letters = [TOKENIZER.decode([snippet[0]])[0] for snippet in sample.prompt_ids]
    assert letters == ["<A_SECTION>", "<B_SECTION>"]
    # Each snippet opens with the file's first notes inside its window (pitches, in order).
    for snippet, (start, _) in zip(sample.prompt_ids, windows, strict=True):
        snippet_notes = TOKENIZER.ids_to_notes(np.asarray(snippet[1:]))
        inside = np.sort(notes.pitch[onsets >= start - 0.005][: len(snippet_notes)])
        assert sorted(snippet_notes.pitch.tolist()) == inside.tolist()
    malformed = ("[[3,1]]", "[1,2]", "[[1]]", "[[0,1],[2,3],[4,5],[6,7],[8,9]]", "[[2,4],[1,3]]")
    for bad in malformed:
        with pytest.raises(PromptError, match=r"prompt\.windows"):
            run_generate(
                runs["staria"],
                tmp_path / "bad",
                "prompt.source=midi",
                f"prompt.midi=[{midi}]",
                f"prompt.windows={bad}",
            )


def test_a_plain_start_has_no_structure_tokens_and_continues_the_opening(runs, tmp_path):
    midi, ids = plain_copy(runs, tmp_path)
    notes = TOKENIZER.ids_to_notes(ids)
    cut_s = float(np.sort(notes.start_ms)[5]) / 1000.0 + 0.001  # the first six onsets
    manifest = run_generate(
        runs["baseline"],
        tmp_path / "p",
        "prompt.source=midi",
        f"prompt.midi=[{midi}]",
        "prompt.structure=plain",
        f"prompt.continue_s={cut_s}",
        "sampling.max_length=200",
    )
    start = np.asarray(manifest_prompts(manifest)[0]["decoder_start_ids"])
    bos = list(start).index(TOKENIZER.bos_id)
    assert TOKENIZER.decode(list(start[: bos + 1])) == [("prefix", "instrument", "piano"), "<S>"]
    structure = [TOKENIZER.token_to_id[TOKENIZER.section_token(letter)] for letter in "ABCD"]
    assert not np.isin(start, structure).any()
    continued = TOKENIZER.ids_to_notes(start)
    expected = notes.start_ms < cut_s * 1000.0
    assert continued.pitch.tolist() == notes.pitch[expected].tolist()
    assert (start == ids[: len(start)]).all(), "the start is the file's own opening tokens"
    with pytest.raises(PromptError, match="a plain start has no form token"):
        run_generate(
            runs["staria"],
            tmp_path / "f",
            "prompt.source=midi",
            f"prompt.midi=[{midi}]",
            "prompt.structure=plain",
            "prompt.form=AB",
        )


def test_midi_settings_without_a_midi_source_are_refused(runs, tmp_path):
    for source, setting in (
        ("data", "prompt.midi=[x.mid]"),
        ("data", "prompt.windows=[[0,1]]"),
        ("scratch", "prompt.labeller=x.ckpt"),
        ("scratch", "prompt.continue_s=2"),
    ):
        key = setting.split("=")[0]
        with pytest.raises(PromptError, match=key.replace(".", r"\.")):
            run_generate(runs["staria"], tmp_path / "o", f"prompt.source={source}", setting)


def test_the_checkpoint_records_how_its_pieces_were_laid_out(runs):
    loaded = load_checkpoint(runs["staria"])
    assert loaded.task.trained_structure == "labelled" and loaded.structure == "labelled"


def test_prompt_errors_name_the_file(runs, tmp_path):
    broken = tmp_path / "broken.mid"
    broken.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01")
    for path in (broken, tmp_path / "absent.mid"):
        with pytest.raises(PromptError, match=path.name):
            run_generate(
                runs["staria"], tmp_path / "o", "prompt.source=midi", f"prompt.midi=[{path}]"
            )
    split = val_split(runs["staria"])
    piece = piece_from_split(split, 1, TOKENIZER)
    assert piece.source.startswith(split.pieces[1].path) and "piece 1 of" in piece.source


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
