"""The tokenizer: MIDI bytes -> events -> notes -> Aria's token ids, and back.

Modules, in the order the data flows:
- `midi_events`: Standard MIDI File bytes -> flat event arrays (numba-compiled, cached);
- `midi_io`: events -> note tables with Aria's timing, MIDI discovery, MIDI writing,
  `MidiReadError` (the one exception for unreadable input);
- `vocabulary`: every token and id range (Aria's 17,727, then Staria's 15) and the per-id
  tables (`TokenTable`) the rest of Staria reads;
- `codec`: `MusicTokenizerWithStyle`, notes <-> ids <-> tokens, limits and augmentation;
- `cli`: `staria-tokenize`, the round-trip report.

The names below are the public API; the rest of Staria imports them from here.
"""

from staria.tokenizer.codec import MusicTokenizerWithStyle, PieceLimits
from staria.tokenizer.midi_io import MidiReadError, NoteTable, read_notes, scan_midi_files
from staria.tokenizer.vocabulary import (
    COMPOSERS,
    END,
    FORMS,
    GENRES,
    PIECE_FORMS,
    SECTION_LETTERS,
    SEGMENT_MS,
    TIME,
    TIME_STEP_MS,
    UNKNOWN_ID,
    VOCAB_SIZE,
    Token,
    TokenKind,
    TokenTable,
)

__all__ = [
    "COMPOSERS",
    "END",
    "FORMS",
    "GENRES",
    "PIECE_FORMS",
    "SECTION_LETTERS",
    "SEGMENT_MS",
    "TIME",
    "TIME_STEP_MS",
    "UNKNOWN_ID",
    "VOCAB_SIZE",
    "MidiReadError",
    "MusicTokenizerWithStyle",
    "NoteTable",
    "PieceLimits",
    "Token",
    "TokenKind",
    "TokenTable",
    "read_notes",
    "scan_midi_files",
]
