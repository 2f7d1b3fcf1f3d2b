"""Differential fuzzing of the MIDI reader against mido, on seeded mutants of real files.

Each mutant is one to three mutations of a real file, of the kinds that break MIDI parsers in
public bug reports: flipped bytes, truncations, insertions and deletions, chunk lengths that
lie, huge variable-length quantities, and injected meta and sysex events with random (often
lying or invalid) payloads; or, for the event streams, the file re-written by mido with random
messages inserted at random delta times (running status, unknown metas, huge gaps).
On every mutant Staria and the oracle (`midi_oracle`) must agree on accept/refuse, and on
the event stream where both accept; tokenizing an accepted mutant must return or raise
`MidiReadError`, nothing else. `STARIA_FUZZ_CASES` sets the number of
mutants (`make fuzz` runs a long campaign); `STARIA_FUZZ_SEED` the seed.
"""

import contextlib
import os
import random

import pytest

from staria.tokenizer.midi_events import MidiFormatError
from staria.tokenizer.midi_io import MidiReadError
from tests.midi_oracle import (
    SMALL_MIDI,
    mido_events,
    mido_file,
    mutate,
    mutate_messages,
    our_events,
)

CASES = int(os.environ.get("STARIA_FUZZ_CASES", "3000"))
SEED = int(os.environ.get("STARIA_FUZZ_SEED", "0"))


def _seeds() -> list[bytes]:
    return [path.read_bytes() for path in SMALL_MIDI.values()]


@pytest.mark.slow
def test_reader_agrees_with_mido_on_thousands_of_mutants(tokenizer):
    rng = random.Random(SEED)
    seeds = _seeds()
    accepted = refused = 0
    for case in range(CASES):
        seed = rng.choice(seeds)
        mutant = mutate_messages(seed, rng) if rng.random() < 0.3 else mutate(seed, rng)
        where = f"case {case} (seed {SEED}): {mutant.hex()}"
        try:
            expected = mido_events(mido_file(mutant))
        except Exception:
            expected = None
        try:
            ours = our_events(mutant)
        except MidiFormatError as error:
            assert expected is None, f"refused what mido reads ({error.reason}); {where}"
            refused += 1
            continue
        assert expected is not None, f"accepted what mido refuses; {where}"
        assert ours == expected, f"events differ from mido's; {where}"
        accepted += 1
        with contextlib.suppress(MidiReadError):
            tokenizer.tokenize_ids(mutant)
    # Both outcomes must be common, or the mutants test only one side of the rules.
    assert accepted > CASES // 10 and refused > CASES // 10, (accepted, refused)
