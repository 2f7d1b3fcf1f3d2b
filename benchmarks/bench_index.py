"""Indexing cost per file against tokenizing alone, in the same run.

The shared MIDI files are repeated under distinct names (each copy gets one distinct byte so
the duplicate filter keeps them all). The anchor tokenizes every file in this process
(`tokenize_ids`: read, parse, tokenize); `staria-data index` (`build_index`) then indexes the
same files with 1, 2 and all workers, each file in an isolated worker process. Reported per
CPU second (this process and its workers, user + system: readable on any machine, busy or
not) and per wall second; the goal is indexing within 1.3x of tokenizing alone per CPU second.
"""

import argparse
import contextlib
import os
import resource
import tempfile
import time
from pathlib import Path

from staria.data.preprocess import IndexSettings, build_index
from staria.paths import midi_dir
from staria.tokenizer import MusicTokenizerWithStyle
from staria.tokenizer.midi_io import MidiReadError, scan_midi_files


def make_corpus(folder: Path, repeats: int) -> list[Path]:
    sources = scan_midi_files([midi_dir()])
    for copy in range(repeats):
        for number, source in enumerate(sources):
            # Trailing bytes after the last MIDI track are ignored by readers but change the hash.
            data = source.read_bytes() + copy.to_bytes(4, "little")
            (folder / f"{copy:03d}_{number:03d}.mid").write_bytes(data)
    return scan_midi_files([folder])


def cpu_seconds() -> float:
    """User + system seconds of this process and of its finished children."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def measured(work) -> tuple[float, float]:
    """(CPU seconds, wall seconds) of `work()`."""
    cpu, wall = cpu_seconds(), time.perf_counter()
    work()
    return cpu_seconds() - cpu, time.perf_counter() - wall


def tokenize_all(files: list[Path]) -> None:
    """Tokenize each file as the index does, a file that cannot be read costing its error."""
    tokenizer = MusicTokenizerWithStyle()
    for path in files:
        with contextlib.suppress(MidiReadError):
            tokenizer.tokenize_ids(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        corpus, cache = Path(temp) / "corpus", Path(temp) / "cache"
        corpus.mkdir()
        files = make_corpus(corpus, args.repeats)
        tokenize_all(files[:1])  # the first use compiles the reader: not timed
        anchor = measured(lambda: tokenize_all(files))
        rows = {"tokenize alone, in-process (anchor)": anchor}
        for workers in sorted({1, 2, os.cpu_count() or 1}):
            settings = IndexSettings(name=f"bench{workers}")
            rows[f"staria-data index, {workers} worker(s)"] = measured(
                lambda w=workers, s=settings: build_index([corpus], cache, s, workers=w)
            )
    anchor_cpu, anchor_wall = rows["tokenize alone, in-process (anchor)"]
    print(f"{len(files)} files; per-file cost against the anchor (goal: index <= 1.3x per CPU-s)")
    for name, (cpu, wall) in rows.items():
        print(
            f"  {name:38s} {len(files) / cpu:7.0f} files/CPU-s ({cpu / anchor_cpu:4.2f}x)  "
            f"{len(files) / wall:7.0f} files/wall-s ({wall / anchor_wall:4.2f}x)"
        )


if __name__ == "__main__":
    main()
