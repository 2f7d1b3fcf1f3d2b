"""Tokenizer throughput over the shared MIDI folder, against pretty_midi's parse in the same run.

When aria-utils is installed (`pip install -e ".[aria]"`), its own tokenizer (`MidiDict.from_midi`
then `AbsTokenizer.tokenize(..., add_dim_tok=False)` + `encode`, the call behind the reference
ids in `tests/fixtures/aria`) is timed over the same files in the same run, and the ids
of both are compared file by file.

Every figure is per CPU second (this process, one torch thread), the median of `--repeats`
passes for the anchors as for Staria. numba compiles the MIDI reader and writer once (cached on
disk afterwards); the one-off compile is timed in a fresh process with an empty cache and
reported apart, and every timed pass here runs after a warm-up call.
"""

import argparse
import importlib.util
import io
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pretty_midi
import torch

from staria.paths import midi_dir
from staria.tokenizer import MidiReadError, MusicTokenizerWithStyle

COLD_START = """
import sys, time
from staria.tokenizer import MusicTokenizerWithStyle
tokenizer = MusicTokenizerWithStyle()
start = time.process_time()
tokens = tokenizer.tokenize(sys.argv[1])
tokenizer.write_midi(tokens, sys.argv[2])
print(time.process_time() - start)
"""


def _timed(work, repeats: int) -> tuple[float, int]:
    """Median CPU seconds of `repeats` passes and the token count `work` reports."""
    seconds, count = [], 0
    for _ in range(repeats):
        start = time.process_time()
        count = work()
        seconds.append(time.process_time() - start)
    return statistics.median(seconds), count


def compile_seconds(path: Path) -> float:
    """CPU seconds of the first tokenize + write_midi in a fresh process whose numba cache is
    empty."""
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        out = Path(cache) / "out.mid"
        command = [sys.executable, "-c", COLD_START, str(path), str(out)]
        result = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return float(result.stdout.split()[-1])


def aria_utils_work():
    """aria-utils' tokenize + encode of a list of files, or None when it is not installed.

    Returns a function `files -> (token count, {path: ids or None where aria-utils raised})`.
    """
    if importlib.util.find_spec("ariautils") is None:
        return None
    from ariautils.midi import MidiDict
    from ariautils.tokenizer import AbsTokenizer

    aria = AbsTokenizer()

    def work(files) -> tuple[int, dict]:
        ids = {}
        for path in files:
            try:
                midi_dict = MidiDict.from_midi(path)
                ids[path] = aria.encode(aria.tokenize(midi_dict, add_dim_tok=False))
            except Exception:  # aria-utils' own failure on a file is part of what is compared
                ids[path] = None
        return sum(len(i) for i in ids.values() if i is not None), ids

    return work


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--midi-dir", type=Path, default=midi_dir())
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    tokenizer = MusicTokenizerWithStyle()
    candidates = sorted(args.midi_dir.rglob("*.mid*"))
    print(f"numba one-off compile (fresh cache): {compile_seconds(candidates[0]):.1f} CPU-s")
    paths, piano = [], []
    for path in candidates:
        try:
            ids = tokenizer.tokenize_ids(path)  # also warms up the compiled reader
        except MidiReadError:
            continue
        paths.append(path)
        if ids[0] == tokenizer.token_to_id[("prefix", "instrument", "piano")] and ids[1] == 0:
            piano.append(path)
    token_lists = [tokenizer.tokenize(path) for path in paths]
    scratch = Path(tempfile.mkdtemp()) / "out.mid"
    tokenizer.write_midi(token_lists[0], scratch)  # warm-up

    def tokenize_encode(files) -> int:
        return sum(len(tokenizer.encode(tokenizer.tokenize(path))) for path in files)

    def bulk_ids(files) -> int:
        return sum(len(tokenizer.tokenize_ids(path)) for path in files)

    def decode_pretty_midi_write() -> int:
        for tokens in token_lists:
            tokenizer.detokenize(tokenizer.decode(tokenizer.encode(tokens))).write(io.BytesIO())
        return sum(len(tokens) for tokens in token_lists)

    def decode_write_midi() -> int:
        for tokens in token_lists:
            tokenizer.write_midi(tokenizer.decode(tokenizer.encode(tokens)), scratch)
        return sum(len(tokens) for tokens in token_lists)

    def pretty_midi_parse(files) -> int:
        for path in files:
            pretty_midi.PrettyMIDI(str(path))
        return 0

    print(f"{len(paths)} files from {args.midi_dir}, {len(piano)} of them piano only")
    aria_work = aria_utils_work()
    if aria_work is None:
        print('aria-utils is not installed (pip install -e ".[aria]"): no same-run Aria anchor')
    else:
        _, aria_ids = aria_work(paths)  # warm-up, and the ids compared file by file
        same = sum(aria_ids[path] == tokenizer.tokenize_ids(path).tolist() for path in paths)
        print(f"aria-utils gives the same ids as Staria for {same} of {len(paths)} files")
    for files, label in [(paths, "all files"), (piano, "piano only")]:
        baseline, _ = _timed(lambda files=files: pretty_midi_parse(files), args.repeats)
        baseline_rate = len(files) / baseline
        print(f"-- {label}: pretty_midi parse alone {baseline_rate:8.1f} files/CPU-s")
        aria_rate = None
        if aria_work is not None:
            aria_seconds, _ = _timed(lambda files=files: aria_work(files)[0], args.repeats)
            aria_rate = len(files) / aria_seconds
            print(f"-- {label}: aria-utils tokenize+encode {aria_rate:8.1f} files/CPU-s")
        rows = [
            ("tokenize+encode (tokens)", lambda files=files: tokenize_encode(files)),
            ("tokenize_ids (bulk path)", lambda files=files: bulk_ids(files)),
        ]
        if files is paths:
            rows += [
                ("decode+detokenize+write", decode_pretty_midi_write),
                ("decode+write_midi", decode_write_midi),
            ]
        for name, work in rows:
            seconds, tokens = _timed(work, args.repeats)
            rate = len(files) / seconds
            versus_aria = "" if aria_rate is None else f"  x{rate / aria_rate:6.1f} aria-utils"
            print(
                f"{name:28s} {rate:8.1f} files/CPU-s {tokens / seconds:12.0f} tokens/CPU-s"
                f"  x{rate / baseline_rate:6.1f} pretty_midi{versus_aria}"
            )


if __name__ == "__main__":
    main()
