"""Bulk indexing over folders that mix good MIDI with every hostile kind: each bad file is one
line in the skip report, the run goes on, reruns reuse it, and the run's own processes, locks
and writes hold up under kills, concurrent runs and a full disk."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import mido
import pytest

from staria.data.isolation import WorkerLimits
from staria.data.labels import SPLITS
from staria.data.preprocess import IndexSettings, build_index
from staria.files import PARTIAL_SUFFIX
from staria.tokenizer import MusicTokenizerWithStyle
from staria.tokenizer.midi_io import MidiReadError, scan_midi_files
from tests.midi_oracle import (
    SMALL_MIDI,
    case_folders,
    midi_file,
    mutate,
    mutate_messages,
    tempo_dense_file,
)
from tests.processes import descendants, gone_within, running

STARIA_DATA = [sys.executable, "-c", "from staria.data.cli import main; main()"]


def _hostile_folder(folder: Path) -> Path:
    """Good files, the hostile cases, fuzzed mutants, and files built to cost or to be long."""
    folder.mkdir()
    for source in [*SMALL_MIDI.values(), *case_folders()[0].glob("*.mid")]:
        shutil.copy(source, folder / source.name)
    rng = random.Random(3)
    seeds = [path.read_bytes() for path in SMALL_MIDI.values()]
    for index in range(40):
        mutant = (mutate if index % 2 else mutate_messages)(rng.choice(seeds), rng)
        (folder / f"mutant_{index:02d}.mid").write_bytes(mutant)
    (folder / "tempo_dense.mid").write_bytes(tempo_dense_file(20_000))  # ~0.3 MB
    silence = [mido.MetaMessage("set_tempo", tempo=2**24 - 1)]
    silence += [mido.Message("note_on", note=60, velocity=80, time=2**28 - 1)] * 4
    (folder / "years_of_silence.mid").write_bytes(midi_file(silence, ticks_per_beat=1))
    (folder / "not_midi.mid").write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt ")
    shutil.copy(SMALL_MIDI["waltz.mid"], folder / os.fsdecode(b"not-utf8-\xff.mid"))
    (folder / "truncated.mid").write_bytes((SMALL_MIDI["waltz.mid"]).read_bytes()[:300])
    return folder


def _outcomes(folder: Path) -> dict[str, str | None]:
    """What the tokenizer says of each file on its own: None, or the reason it refuses."""
    tokenizer = MusicTokenizerWithStyle()
    outcomes = {}
    for path in scan_midi_files([folder]):
        try:
            tokenizer.tokenize_ids(path)
            outcomes[str(path)] = None
        except MidiReadError as error:
            outcomes[str(path)] = error.reason
    return outcomes


@pytest.mark.slow
def test_index_over_hostile_files_lists_each_bad_one_and_reuses_the_run(tmp_path):
    folder = _hostile_folder(tmp_path / "midi")
    expected = _outcomes(folder)
    assert 10 < sum(reason is not None for reason in expected.values()) < len(expected) - 10
    result = build_index([folder], tmp_path / "cache", IndexSettings(name="hostile"), workers=2)
    report = json.loads(result.report_path.read_text())
    skipped = {entry["path"]: entry["reason"] for entry in report["skipped"]}
    assert skipped == {
        path: f"MidiReadError: {reason}" for path, reason in expected.items() if reason
    }
    kept = {entry["path"] for entry in report["duplicates"]}
    kept |= {piece["path"] for s in SPLITS for piece in _pieces(result.split_dirs[s])}
    assert kept == {path for path, reason in expected.items() if reason is None}
    assert "years_of_silence.mid" in "".join(skipped) and "tempo_dense.mid" not in "".join(skipped)

    again = build_index([folder], tmp_path / "cache", IndexSettings(name="hostile"), workers=2)
    assert again.reused and again.tokenized_files == 0


def _pieces(split_dir: Path) -> list[dict]:
    return json.loads((split_dir / "index.json").read_text())["pieces"]


def test_files_over_a_worker_limit_are_skipped_with_the_reason_and_not_retried(tmp_path):
    folder = tmp_path / "midi"
    folder.mkdir()
    shutil.copy(SMALL_MIDI["basic.mid"], folder)
    (folder / "large.mid").write_bytes(tempo_dense_file(60_000))  # ~1 MB: ~40 MB of events
    limits = WorkerLimits(timeout_s=120, memory_mib=24)
    settings = IndexSettings(name="capped", val_fraction=0, test_fraction=0)
    result = build_index([folder], tmp_path / "cache", settings, workers=1, worker_limits=limits)
    report = json.loads(result.report_path.read_text())
    assert [Path(entry["path"]).name for entry in report["skipped"]] == ["large.mid"]
    assert "out of memory" in report["skipped"][0]["reason"]
    assert result.counts["train"] == 1
    again = build_index([folder], tmp_path / "cache", settings, workers=1, worker_limits=limits)
    assert again.reused and again.tokenized_files == 0


def test_a_file_changed_while_indexing_does_not_stop_the_run(tmp_path):
    folder = tmp_path / "midi"
    folder.mkdir()
    for index in range(4):
        shutil.copy(SMALL_MIDI["waltz.mid"], folder / f"piece_{index}.mid")
    touched = folder / "piece_0.mid"

    def touch_after_each_chunk(count: int, total: int) -> None:
        touched.write_bytes(touched.read_bytes())  # new mtime: the inputs changed
        (folder / f"new_{count}_{time.monotonic_ns()}.mid").write_bytes(b"not yet indexed")

    settings = IndexSettings(name="changing")
    result = build_index(
        [folder], tmp_path / "cache", settings, workers=1, chunk_size=2,
        progress=touch_after_each_chunk,
    )  # fmt: skip
    assert sum(result.counts.values()) + len(json.loads(result.report_path.read_text())[
        "duplicates"]) == 4  # fmt: skip


def test_folders_that_cannot_be_listed_are_skipped_not_fatal(tmp_path):
    folder = tmp_path / "midi"
    folder.mkdir()
    shutil.copy(SMALL_MIDI["basic.mid"], folder)
    # A chain of folders whose full path outgrows PATH_MAX (4096): listing its bottom fails.
    fd = os.open(folder, os.O_RDONLY)
    for _ in range(20):
        os.mkdir("d" * 250, dir_fd=fd)
        child = os.open("d" * 250, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = child
    os.close(fd)
    settings = IndexSettings(name="deep", val_fraction=0, test_fraction=0)
    result = build_index([folder], tmp_path / "cache", settings, workers=1)
    assert result.counts["train"] == 1


def test_cli_names_a_missing_source_and_prints_any_cache_path(tmp_path):
    missing = subprocess.run(
        [*STARIA_DATA, "index", str(tmp_path / "nowhere"), "--cache-dir", str(tmp_path / "c")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "nowhere is neither a file nor a folder" in missing.stderr
    folder = tmp_path / "midi"
    folder.mkdir()
    shutil.copy(SMALL_MIDI["basic.mid"], folder)
    odd = subprocess.run(
        [*STARIA_DATA, "index", str(folder), "--cache-dir", str(tmp_path / "cache[/]")],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert odd.returncode == 0, odd.stderr[-2000:]
    assert "cache[/]" in odd.stdout


def test_crop_keeps_long_pieces_cropped_and_the_report_says_which(tmp_path):
    folder = tmp_path / "midi"
    folder.mkdir()
    for name in ("basic.mid", "waltz.mid"):
        shutil.copy(SMALL_MIDI[name], folder)
    settings = IndexSettings(name="crop", max_tokens=300, crop=True, val_fraction=0)
    result = build_index([folder], tmp_path / "cache", settings, workers=1)
    report = json.loads(result.report_path.read_text())
    assert [Path(entry["path"]).name for entry in report["cropped"]] == ["waltz.mid"]
    assert "cropped to" in report["cropped"][0]["reason"]
    lengths = [piece["num_tokens"] for s in SPLITS for piece in _pieces(result.split_dirs[s])]
    assert len(lengths) == 2 and max(lengths) <= 300


def test_cli_summary_counts_and_points_to_the_report(tmp_path):
    folder = _hostile_folder(tmp_path / "midi")
    run = subprocess.run(
        [*STARIA_DATA, "index", str(folder), "--cache-dir", str(tmp_path / "cache")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    expected = _outcomes(folder)
    skipped = sum(reason is not None for reason in expected.values())
    summary = " ".join(run.stdout.split())
    assert f"of {len(expected)} files indexed, {skipped} skipped" in summary
    assert "_report.json" in summary


def _index_command(folder: Path, cache: Path, *extra: str) -> list[str]:
    return [*STARIA_DATA, "index", str(folder), "--cache-dir", str(cache), *extra]


def test_two_runs_on_one_cache_folder_both_finish_with_the_same_index(tmp_path):
    folder = _hostile_folder(tmp_path / "midi")
    cache = tmp_path / "cache"
    runs = [
        subprocess.Popen(
            _index_command(folder, cache, "--workers", "1", "--chunk-size", "8"),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    finals = sorted(path.name for path in cache.iterdir() if not path.name.startswith("."))
    assert len(finals) == 4  # three splits and the report, once
    assert not [path for path in cache.iterdir() if path.name.startswith((".work", ".tmp"))]
    assert sum(("reused index" in out) for out, _ in outputs) == 1


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_killing_the_index_kills_its_workers(tmp_path):
    folder = tmp_path / "midi"
    folder.mkdir()
    dense = tempo_dense_file(20_000)
    for index in range(300):  # distinct bytes per file, so every file is real work
        (folder / f"piece_{index:03d}.mid").write_bytes(dense + bytes([index % 256]))
    run = subprocess.Popen(
        _index_command(folder, tmp_path / "cache", "--workers", "2", "--chunk-size", "4"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    workers: set[int] = set()
    while len(workers) < 2 and time.monotonic() < deadline and run.poll() is None:
        workers = {pid for pid in descendants(run.pid) if running(pid)}
        time.sleep(0.2)
    assert len(workers) >= 2, "the index never started its workers"
    run.send_signal(signal.SIGKILL)
    run.wait()
    assert gone_within(workers, 30)


@pytest.fixture
def small_disk(tmp_path):
    """A 192 KiB tmpfs: a real full disk (ENOSPC from the kernel), needs root."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=192k", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    yield mount_point
    subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_is_a_clear_error_and_leaves_no_partial_output(tmp_path, small_disk):
    folder = tmp_path / "midi"
    folder.mkdir()
    for index in range(12):
        (folder / f"piece_{index}.mid").write_bytes(tempo_dense_file(4_000) + bytes([index]))
    cache = small_disk / "cache"
    run = subprocess.run(
        _index_command(folder, cache, "--workers", "1", "--chunk-size", "2"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode != 0
    message = " ".join(run.stderr.split())
    assert "No space left on device while writing" in message and str(cache) in message
    assert "Traceback" not in run.stderr
    leftovers = [path.name for path in cache.rglob("*") if path.name.endswith(PARTIAL_SUFFIX)]
    assert leftovers == []
    assert not [path for path in cache.iterdir() if path.name.startswith("dataset_")]
    os.sync()
