"""Indexing real and synthetic MIDI: bad files, reuse, interruption, splits, duplicates, shards."""

import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from staria.data.cache import NO_SECTION, CachedSplit, IncompleteIndexError
from staria.data.labels import SPLITS
from staria.data.preprocess import (
    CHUNK_SUFFIX,
    IndexSettings,
    UnsafeLegacyCacheError,
    build_index,
    find_index,
    iter_legacy_path_list,
    merge_index,
    split_of,
)
from staria.data.synthetic import SynthesisConfig, synthesize
from staria.tokenizer import SECTION_LETTERS, MusicTokenizerWithStyle
from staria.tokenizer.midi_io import scan_midi_files

BAD_FILES = {
    "ValueError_Control168.mid",
    "Issue104_Bizarre_Love_Triangle2.mid",
    "empty.mid",
}


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    synthesize(SynthesisConfig(pieces_per_form=2, min_tokens=200, max_tokens=500), out)
    return out


def _split_hashes(result):
    return {
        split: {p.sha256 for p in CachedSplit(d).pieces} for split, d in result.split_dirs.items()
    }


def test_real_midi_skips_bad_files_with_reasons_and_second_run_reuses(shared_midi_dir, tmp_path):
    result = build_index([shared_midi_dir], tmp_path, IndexSettings(name="shared"), workers=1)
    report = json.loads(result.report_path.read_text())
    skipped = {entry["path"].rsplit("/", 1)[-1]: entry["reason"] for entry in report["skipped"]}
    assert set(skipped) >= BAD_FILES
    assert all(skipped[name] for name in BAD_FILES)
    found = len(scan_midi_files([shared_midi_dir]))
    assert sum(result.counts.values()) + len(report["skipped"]) + len(report["duplicates"]) == found
    assert result.tokenized_files == found and not result.reused
    assert all(d.name.startswith("dataset_real_shared_limit0_") for d in result.split_dirs.values())
    marker_times = {s: (d / "COMPLETE").stat().st_mtime_ns for s, d in result.split_dirs.items()}

    again = build_index([shared_midi_dir], tmp_path, IndexSettings(name="shared"), workers=1)
    assert again.reused and again.tokenized_files == 0
    assert again.split_dirs == result.split_dirs
    assert {s: (d / "COMPLETE").stat().st_mtime_ns for s, d in again.split_dirs.items()} == (
        marker_times
    )

    train = CachedSplit(result.split_dirs["train"])
    tokens = np.load(train.folder / "tokens.npy", mmap_mode="r", allow_pickle=False)
    assert tokens.dtype == np.uint16 and len(tokens) == train.offsets[-1]
    tok = MusicTokenizerWithStyle()
    first = train.pieces[0]
    assert train.tokens(0).tolist() == tok.tokenize_ids(first.path).tolist()
    assert (train.section_ids(0) == NO_SECTION).all()


def test_interrupted_run_leaves_no_trusted_cache_and_resumes(shared_midi_dir, tmp_path):
    settings = IndexSettings(name="interrupted")
    chunks_done = []

    def interrupt_after_two_chunks(count: int, total: int) -> None:
        chunks_done.extend([count] if count else [])  # the first call (0) says the total
        if len(chunks_done) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        build_index(
            [shared_midi_dir], tmp_path, settings, workers=1, chunk_size=8,
            progress=interrupt_after_two_chunks,
        )  # fmt: skip
    assert find_index([shared_midi_dir], tmp_path, settings) is None
    assert not any(p.name.endswith(SPLITS) for p in tmp_path.iterdir())
    with pytest.raises(IncompleteIndexError):
        merge_index([shared_midi_dir], tmp_path, settings)

    resumed = build_index([shared_midi_dir], tmp_path, settings, workers=1, chunk_size=8)
    total = len(scan_midi_files([shared_midi_dir]))
    assert resumed.tokenized_files == total - sum(chunks_done)
    assert find_index([shared_midi_dir], tmp_path, settings) is not None
    assert not any(p.name.startswith((".work", ".tmp")) for p in tmp_path.iterdir())


def test_splits_are_deterministic_leak_free_and_follow_the_content_hash(shared_midi_dir, tmp_path):
    settings = IndexSettings(name="splits", val_fraction=0.3, test_fraction=0.3)
    first = build_index([shared_midi_dir], tmp_path / "a", settings, workers=1, chunk_size=5)
    second = build_index([shared_midi_dir], tmp_path / "b", settings, workers=1, chunk_size=16)
    hashes = _split_hashes(first)
    assert hashes == _split_hashes(second)
    assert all(hashes[split] for split in SPLITS)
    for a in SPLITS:
        for b in SPLITS:
            assert a == b or not hashes[a] & hashes[b]
        assert all(split_of(sha, settings) == a for sha in hashes[a])


def test_duplicate_content_is_indexed_once(shared_midi_dir, tmp_path):
    folder = tmp_path / "midi"
    folder.mkdir()
    original = shared_midi_dir / "pretty-midi" / "example.mid"
    shutil.copy(original, folder / "a.mid")
    shutil.copy(original, folder / "b_copy.MIDI")
    result = build_index([folder], tmp_path / "cache", IndexSettings(name="dups"), workers=1)
    report = json.loads(result.report_path.read_text())
    assert sum(result.counts.values()) == 1
    assert report["duplicates"] == [
        {"path": str((folder / "b_copy.MIDI").resolve()), "duplicate_of": str(folder / "a.mid")}
    ]


def test_labelled_pieces_get_form_and_section_tokens_and_spans(synthetic_dir, tmp_path):
    settings = IndexSettings(mode="synthetic", name="labelled")
    result = build_index([synthetic_dir], tmp_path, settings, workers=1)
    tok = MusicTokenizerWithStyle()
    train = CachedSplit(result.split_dirs["train"])
    assert len(train) > 0
    for piece, record in enumerate(train.pieces):
        labels = json.loads(Path(record.path).with_suffix(".json").read_text())
        assert labels["split"] == "train"
        tokens = tok.decode(train.tokens(piece).tolist())
        bos = tokens.index("<S>")
        assert all(t[0] == "prefix" for t in tokens[: bos - 1])
        assert tokens[bos - 1] == tok.form_token(record.form)
        assert tokens[bos + 1] == "<A_SECTION>" and tokens[-1] == "<E>"
        assert "".join(letter for letter, _, _ in record.sections) == record.form
        section_ids = train.section_ids(piece)
        for letter, start, end in record.sections:
            assert tokens[start - 1] == tok.section_token(letter)
            assert (section_ids[start - 1 : end] == SECTION_LETTERS.index(letter)).all()
            assert not any(str(t).endswith("_SECTION>") for t in tokens[start:end])
        assert record.sections[-1][2] == len(tokens) - 1


def test_sharded_runs_merge_into_the_single_run_result(synthetic_dir, tmp_path):
    settings = IndexSettings(mode="synthetic", name="sharded")
    kwargs = {"workers": 1, "chunk_size": 3, "num_shards": 2}
    assert build_index([synthetic_dir], tmp_path / "s", settings, shard_index=0, **kwargs) is None
    with pytest.raises(IncompleteIndexError, match="chunks unfinished"):
        merge_index([synthetic_dir], tmp_path / "s", settings)
    assert build_index([synthetic_dir], tmp_path / "s", settings, shard_index=1, **kwargs) is None
    merged = merge_index([synthetic_dir], tmp_path / "s", settings)
    single = build_index([synthetic_dir], tmp_path / "one", settings, workers=2)
    assert merged.counts == single.counts
    for split in SPLITS:
        a, b = CachedSplit(merged.split_dirs[split]), CachedSplit(single.split_dirs[split])
        assert a.pieces == b.pieces
        assert np.array_equal(a.offsets, b.offsets)


@pytest.mark.parametrize("cut", [1, 2, 3, -1])
def test_a_damaged_chunk_file_stops_the_merge_naming_it(synthetic_dir, tmp_path, cut):
    """Bytes missing from (or added to) a finished chunk are found against its records."""
    settings = IndexSettings(mode="synthetic", name="damaged")
    kwargs = {"workers": 1, "chunk_size": 3, "num_shards": 2}
    for shard in (0, 1):
        build_index([synthetic_dir], tmp_path, settings, shard_index=shard, **kwargs)
    (chunk,) = [path for path in tmp_path.rglob(f"chunk-000001{CHUNK_SUFFIX}")]
    data = chunk.read_bytes()
    chunk.write_bytes(data[:-cut] if cut > 0 else data + b"\0")
    with pytest.raises(IncompleteIndexError, match=f"{chunk.name}: {len(data) - cut} bytes"):
        merge_index([synthetic_dir], tmp_path, settings)


def test_legacy_pickle_list_needs_the_flag_that_says_pickle_runs_code(shared_midi_dir, tmp_path):
    legacy = tmp_path / "paths.pkl"
    paths = [str(shared_midi_dir / "pretty-midi" / "example.mid")]
    legacy.write_bytes(pickle.dumps({"train": paths}))
    with pytest.raises(UnsafeLegacyCacheError, match="runs arbitrary code"):
        list(iter_legacy_path_list(legacy))
    loaded = list(iter_legacy_path_list(legacy, allow_pickle_legacy_cache_runs_code=True))
    assert [str(p) for p in loaded] == paths


def test_a_chunk_mixing_labelled_unlabelled_and_bad_files_keeps_each_files_ids(
    synthetic_dir, shared_midi_dir, tmp_path
):
    """One chunk holds labelled, unlabelled and unreadable files in turn: each kept piece gets
    the tokens and section ids it gets in an index of its own kind alone."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    labelled = scan_midi_files([synthetic_dir])[:4]
    shared = scan_midi_files([shared_midi_dir])
    others = [p for p in shared if p.name not in BAD_FILES][:2]
    others += [p for p in shared if p.name in BAD_FILES][:2]
    for number, (first, second) in enumerate(zip(labelled, others, strict=True)):
        shutil.copy(first, folder / f"{number:02d}a.mid")
        shutil.copy(first.with_suffix(".json"), folder / f"{number:02d}a.json")
        shutil.copy(second, folder / f"{number:02d}b.mid")
    settings = IndexSettings(mode="synthetic", name="mixed")
    mixed = build_index([folder], tmp_path / "cache", settings, workers=1, chunk_size=64)
    alone = build_index([synthetic_dir], tmp_path / "alone", settings, workers=1)
    expected = {}
    for split_dir in alone.split_dirs.values():
        split = CachedSplit(split_dir)
        for piece, record in enumerate(split.pieces):
            expected[record.sha256] = (split.tokens(piece).tolist(), split.section_ids(piece))
    tok = MusicTokenizerWithStyle()
    seen = 0
    for split_dir in mixed.split_dirs.values():
        split = CachedSplit(split_dir)
        for piece, record in enumerate(split.pieces):
            seen += 1
            if record.path.endswith("a.mid"):
                tokens, section_ids = expected[record.sha256]
                assert split.tokens(piece).tolist() == tokens
                assert (split.section_ids(piece) == section_ids).all()
            else:
                assert split.tokens(piece).tolist() == tok.tokenize_ids(record.path).tolist()
                assert (split.section_ids(piece) == NO_SECTION).all()
    report = json.loads(mixed.report_path.read_text())
    assert len(report["skipped"]) == 2 and seen == 2 * len(labelled) - 2
