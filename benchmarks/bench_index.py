"""Indexing throughput (files/s) on 1 and 2 worker processes over the shared MIDI files.

The shared files are repeated under distinct names (each copy gets one distinct byte so the
duplicate filter keeps them all) to give the workers enough to do; prints the 2:1 ratio.
"""

import argparse
import tempfile
import time
from pathlib import Path

from staria.data.preprocess import IndexSettings, build_index, scan_midi_files
from staria.paths import midi_dir


def make_corpus(folder: Path, repeats: int) -> int:
    sources = scan_midi_files([midi_dir()])
    for copy in range(repeats):
        for number, source in enumerate(sources):
            # Trailing bytes after the last MIDI track are ignored by readers but change the hash.
            data = source.read_bytes() + copy.to_bytes(4, "little")
            (folder / f"{copy:03d}_{number:03d}.mid").write_bytes(data)
    return repeats * len(sources)


def files_per_second(corpus: Path, cache: Path, workers: int) -> float:
    start = time.perf_counter()
    result = build_index([corpus], cache, IndexSettings(name=f"bench{workers}"), workers=workers)
    elapsed = time.perf_counter() - start
    assert not result.reused
    return len(scan_midi_files([corpus])) / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temp:
        corpus, cache = Path(temp) / "corpus", Path(temp) / "cache"
        corpus.mkdir()
        count = make_corpus(corpus, args.repeats)
        one = files_per_second(corpus, cache, workers=1)
        two = files_per_second(corpus, cache, workers=2)
    print(f"{count} files: 1 process {one:.0f} files/s, 2 processes {two:.0f} files/s")
    print(f"ratio 2:1 = {two / one:.2f}")


if __name__ == "__main__":
    main()
