"""Where the Aria-compatibility tests read their MIDI files and Aria's reference ids.

The shared folder (`STARIA_MIDI_DIR`, default `../shared/midi`) holds 50 files with the ids
aria-utils gives them and Aria's full vocabulary listing. A bare clone has no shared folder:
then a subset vendored under `tests/fixtures/aria` (7 small files, their reference ids, and the
SHA-256 of the vocabulary listing) keeps the same checks running.
"""

import hashlib
import json
from pathlib import Path

from staria.paths import midi_dir

VENDORED = Path(__file__).parent / "fixtures" / "aria"
REFERENCE_FILE = "aria_reference_ids.json"


def folder() -> Path:
    """The shared folder when it holds Aria's reference ids, else the vendored subset."""
    shared = midi_dir()
    return shared if (shared / REFERENCE_FILE).is_file() else VENDORED


def is_shared() -> bool:
    """Whether `folder()` is the shared folder (all of its files), not the vendored subset."""
    return folder() != VENDORED


def reference() -> dict:
    """{"files": {relative path: ids}, "errors": {relative path: Aria's error}, ...}."""
    return json.loads((folder() / REFERENCE_FILE).read_text())


_vendored = json.loads((VENDORED / REFERENCE_FILE).read_text())
VENDORED_VOCAB_SHA256 = _vendored["vocab_sha256"]
VENDORED_FILES = list(_vendored["files"])  # in the shared folder too, under the same names


def vocabulary_digest(vocab: list) -> str:
    """SHA-256 of a vocabulary listing as compact JSON (tuples as lists, UTF-8)."""
    listing = json.dumps(vocab, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(listing.encode()).hexdigest()
