"""Default locations, each overridable by an environment variable so tests and CI stay portable."""

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def midi_dir() -> Path:
    """Folder of real third-party MIDI test files (`STARIA_MIDI_DIR`, default `../shared/midi`)."""
    return Path(os.environ.get("STARIA_MIDI_DIR", REPO_ROOT.parent / "shared" / "midi"))


def cases_dir() -> Path:
    """Folder of small hostile inputs with their expected outcomes (`STARIA_CASES_DIR`, default
    `../shared/cases`)."""
    return Path(os.environ.get("STARIA_CASES_DIR", REPO_ROOT.parent / "shared" / "cases"))
