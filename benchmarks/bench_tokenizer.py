"""Tokenizer throughput over the shared MIDI folder, against pretty_midi's parse in the same run."""

import argparse
import io
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pretty_midi
import torch

from staria.paths import midi_dir
from staria.tokenizer import MidiReadError, MusicTokenizerWithStyle

ARIA_FILES_PER_SECOND = 23.0  # Aria's own tokenizer on real piano MIDI on these machines (issue 2)


def _timed(work, repeats: int) -> tuple[float, int]:
    """Best wall time of `repeats` passes and the token count `work` reports."""
    best, count = float("inf"), 0
    for _ in range(repeats):
        start = time.perf_counter()
        count = work()
        best = min(best, time.perf_counter() - start)
    return best, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--midi-dir", type=Path, default=midi_dir())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = MusicTokenizerWithStyle()
    paths = []
    for path in sorted(args.midi_dir.rglob("*.mid*")):
        try:
            tokenizer.tokenize_ids(path)
            paths.append(path)
        except MidiReadError:
            continue
    token_lists = [tokenizer.tokenize(path) for path in paths]

    def tokenize_encode() -> int:
        return sum(len(tokenizer.encode(tokenizer.tokenize(path))) for path in paths)

    def bulk_ids() -> int:
        return sum(len(tokenizer.tokenize_ids(path)) for path in paths)

    def decode_write() -> int:
        for tokens in token_lists:
            tokenizer.detokenize(tokenizer.decode(tokenizer.encode(tokens))).write(io.BytesIO())
        return sum(len(tokens) for tokens in token_lists)

    def pretty_midi_parse() -> int:
        for path in paths:
            pretty_midi.PrettyMIDI(str(path))
        return 0

    baseline, _ = _timed(pretty_midi_parse, 1)
    baseline_rate = len(paths) / baseline
    print(f"{len(paths)} files from {args.midi_dir}")
    print(f"pretty_midi parse alone      {baseline_rate:8.1f} files/s")
    for label, work in [
        ("tokenize+encode (tokens)", tokenize_encode),
        ("tokenize_ids (bulk path)", bulk_ids),
        ("decode+detokenize+write", decode_write),
    ]:
        seconds, tokens = _timed(work, args.repeats)
        rate = len(paths) / seconds
        print(
            f"{label:28s} {rate:8.1f} files/s {tokens / seconds:12.0f} tokens/s"
            f"  x{rate / baseline_rate:5.1f} pretty_midi  x{rate / ARIA_FILES_PER_SECOND:5.1f} Aria"
        )


if __name__ == "__main__":
    main()
