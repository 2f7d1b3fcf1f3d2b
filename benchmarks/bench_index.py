"""Indexing cost per file against tokenizing alone, in the same run.

The shared MIDI files are repeated under distinct names (each copy gets one distinct byte so
the duplicate filter keeps them all) into two corpora of equal size, A and B. The anchor
tokenizes files in this process (`tokenize_ids`: read, parse, tokenize); `staria-data index`
(`build_index`) indexes the same files with 1, 2 and all workers, each file in an isolated
worker process. Each is measured on A and on A + B: the difference is the marginal cost of
B's files (what each further file of a large corpus costs), the rest of A's cost the fixed
start-up (worker processes importing the tokenizer and loading its compiled reader). Reported
per CPU second (this process and its workers, user + system: readable on any machine, busy or
not) and per wall second; the goal is indexing within 1.3x of tokenizing alone per file.
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
from staria.tokenizer import MidiReadError, MusicTokenizerWithStyle, scan_midi_files


def make_corpus(folder: Path, copies: range) -> list[Path]:
    """The shared files once per copy number in `copies`, in `folder`."""
    folder.mkdir()
    sources = scan_midi_files([midi_dir()])
    for copy in copies:
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
    parser.add_argument("--repeats", type=int, default=30, help="copies in each corpus")
    args = parser.parse_args()
    rows: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory() as temp:
        first = make_corpus(Path(temp) / "a", range(args.repeats))
        second = make_corpus(Path(temp) / "b", range(args.repeats, 2 * args.repeats))
        tokenize_all(first[:1])  # the first use compiles the reader: not timed
        anchor = "tokenize alone, in-process (anchor)"
        rows[anchor] = (
            measured(lambda: tokenize_all(first)),
            measured(lambda: tokenize_all(first + second)),
        )
        cache, corpora = Path(temp) / "cache", (first[0].parent, second[0].parent)
        for workers in sorted({1, 2, os.cpu_count() or 1}):
            rows[f"staria-data index, {workers} worker(s)"] = tuple(
                measured(
                    lambda n=count, w=workers: build_index(
                        list(corpora[:n]), cache, IndexSettings(name=f"bench{w}_{n}"), workers=w
                    )
                )
                for count in (1, 2)
            )
    added = len(second)

    def marginal(name: str) -> tuple[float, float]:
        (cpu_a, wall_a), (cpu_ab, wall_ab) = rows[name]
        return (cpu_ab - cpu_a) / added, (wall_ab - wall_a) / added

    anchor_cpu, anchor_wall = marginal(anchor)
    print(
        f"{len(first)} files, then {len(first) + added}: the marginal cost of the {added} added "
        "files, against the anchor (goal: index <= 1.3x per CPU-s), and the fixed start-up"
    )
    for name, ((cpu_a, _), _) in rows.items():
        cpu, wall = marginal(name)
        fixed = cpu_a - len(first) * cpu
        print(
            f"  {name:38s} {1 / cpu:7.0f} files/CPU-s ({cpu / anchor_cpu:4.2f}x)  "
            f"{1 / wall:7.0f} files/wall-s ({wall / anchor_wall:4.2f}x)  "
            f"start-up {fixed:5.2f} CPU-s"
        )


if __name__ == "__main__":
    main()
