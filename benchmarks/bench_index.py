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
import statistics
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


def cpu_seconds() -> tuple[float, float]:
    """User + system seconds of this process, and of its finished children (the workers)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime, children.ru_utime + children.ru_stime


def measured(work) -> tuple[float, float, float]:
    """(CPU seconds, wall seconds, of the CPU seconds those of the workers) of `work()`."""
    (own, children), wall = cpu_seconds(), time.perf_counter()
    work()
    (own_after, children_after), wall_after = cpu_seconds(), time.perf_counter()
    workers = children_after - children
    return own_after - own + workers, wall_after - wall, workers


def tokenize_all(files: list[Path]) -> None:
    """Tokenize each file as the index does, a file that cannot be read costing its error."""
    tokenizer = MusicTokenizerWithStyle()
    for path in files:
        with contextlib.suppress(MidiReadError):
            tokenizer.tokenize_ids(path)


def index_pair(corpora, cache: Path, label: str, workers: int):
    """(`measured` of indexing corpus A, of A + B), fresh caches."""
    return tuple(
        measured(
            lambda n=count: build_index(
                list(corpora[:n]), cache, IndexSettings(name=f"{label}_{n}"), workers=workers
            )
        )
        for count in (1, 2)
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=20, help="copies in each corpus")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    args = parser.parse_args()
    anchor = "tokenize alone, in-process (anchor)"
    names = [anchor] + [f"staria-data index, {n} worker(s)" for n in sorted({1, 2, _cores()})]
    rows: dict[str, list[tuple[tuple[float, ...], tuple[float, ...]]]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as temp:
        first = make_corpus(Path(temp) / "a", range(args.repeats))
        second = make_corpus(Path(temp) / "b", range(args.repeats, 2 * args.repeats))
        tokenize_all(first[:1])  # the first use compiles the reader: not timed
        cache, corpora = Path(temp) / "cache", (first[0].parent, second[0].parent)
        for round_index in range(args.rounds):
            rows[anchor].append(
                (
                    measured(lambda: tokenize_all(first)),
                    measured(lambda: tokenize_all(first + second)),
                )
            )
            for name, workers in zip(names[1:], sorted({1, 2, _cores()}), strict=True):
                label = f"bench{round_index}_{workers}"
                rows[name].append(index_pair(corpora, cache, label, workers))
    added = len(second)

    def marginal(run) -> tuple[float, float, float, float]:
        """(CPU s, wall s, the workers' CPU s) per added file and the fixed CPU s of one
        (A, A + B) pair."""
        (cpu_a, wall_a, workers_a), (cpu_ab, wall_ab, workers_ab) = run
        cpu, wall = (cpu_ab - cpu_a) / added, (wall_ab - wall_a) / added
        return cpu, wall, (workers_ab - workers_a) / added, cpu_a - len(first) * cpu

    anchor_cpu = statistics.median(marginal(run)[0] for run in rows[anchor])
    anchor_wall = statistics.median(marginal(run)[1] for run in rows[anchor])
    print(
        f"{len(first)} files, then {len(first) + added}: the marginal cost of the {added} added "
        f"files against the anchor (goal: index <= 1.3x per CPU-s), medians of {args.rounds} "
        "alternating rounds [range], the CPU-ms per file the workers spent and this "
        "process, and the fixed start-up"
    )
    for name in names:
        costs = [marginal(run) for run in rows[name]]
        columns = zip(*costs, strict=True)
        cpu, wall, workers, fixed = (statistics.median(column) for column in columns)
        own = statistics.median(c - w for c, _, w, _ in costs)
        ratios = sorted(c / anchor_cpu for c, *_ in costs)
        print(
            f"  {name:38s} {1 / cpu:7.0f} files/CPU-s ({cpu / anchor_cpu:4.2f}x "
            f"[{ratios[0]:4.2f}, {ratios[-1]:4.2f}])  {1 / wall:7.0f} files/wall-s "
            f"({wall / anchor_wall:4.2f}x)  workers {1000 * workers:4.2f} + this process "
            f"{1000 * own:4.2f} CPU-ms/file  start-up {fixed:5.2f} CPU-s"
        )


def _cores() -> int:
    return os.cpu_count() or 1


if __name__ == "__main__":
    main()
